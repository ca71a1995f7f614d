"""The ops an uploaded model may hold: an explicit allowlist per namespace (the data model_ops.py checks).

Each entry is an op known to touch no memory outside its tensors' storage: dense tensor math whose
kernels check their shapes and indices (index_select, gather, embedding and scatter refuse an index
out of range), the interpreter's own structure (prim), and the int8 kernels our quantize passes emit.
An op that is not listed is refused, whatever it is called. Deliberately absent:
- sparse and nested tensors: their constructors do not check their indices (`sparse_coo_tensor`,
  `sparse_csr_tensor`, `_sparse_*_unsafe`, `to_sparse*`, `_nested_*`), and `mm` or `to_dense` on such
  a tensor reads or writes outside a buffer;
- `_unsafe_*` ops, `set_`, `as_strided`, `data_ptr` and storage ops, which alias or expose memory by
  address; `empty*`, `new_empty` and `resize_`, which hand a model uninitialized memory, i.e. whatever
  an earlier request (or the API key) left there;
- I/O, printing and process-wide state: `from_file`, `save`, `_print`/`prim::Print`, `manual_seed`;
- calls left after inlining (`prim::CallFunction`/`CallMethod`: a target not known statically) and
  Python (`prim::PythonOp`).

Built from reality: `bench/support/collect_ops.py` collects every op of every model in the tests and benches,
of common scripted library modules (nn.TransformerEncoderLayer, nn.MultiheadAttention, LSTM/GRU,
F.interpolate, ...) and of every variant our passes make of them; tests/pipeline/test_model_ops.py proves all of
those are listed. To add an op: check its CPU kernel bounds-checks what it reads and writes, then add it.
"""

from __future__ import annotations


def _ops(text: str) -> frozenset[str]:
    return frozenset(text.split())


ALLOWED: dict[str, frozenset[str]] = {
    # The interpreter: constants, attributes, control flow, lists/tuples/dicts, type refinements.
    "prim": _ops(
        """
        Constant GetAttr SetAttr If Loop Return ListConstruct ListUnpack TupleConstruct TupleUnpack
        TupleIndex DictConstruct CreateObject RaiseException Uninitialized unchecked_cast isinstance
        NumToTensor ImplicitTensorToNum device dtype layout is_cuda is_cpu is_mkldnn
        is_quantized is_sparse is_nested is_meta requires_grad data shape min max abs Enter Exit
        fork type
        """
    ),
    "aten": _ops(
        """
        __and__ __contains__ __derive_index __getitem__ __iand__ __ior__ __is__ __isnot__ __lshift__
        __not__ __or__ __range_length __round_to_zero_floordiv __rshift__ __xor__ _set_item append wait
        clear copy count extend insert keys values items dict list len pop remove reverse sort sorted
        index str format join split strip lower upper startswith endswith replace isdigit
        Bool Float Int Complex ScalarImplicit IntImplicit FloatImplicit ComplexImplicit
        Delete divmod floordiv floor ceil round trunc frac fmod remainder sqrt exp log log2 log10 log1p
        pow abs neg sign sgn add add_ sub sub_ mul mul_ div div_ true_divide floor_divide rsub
        eq ne lt le gt ge eq_ ne_ lt_ le_ gt_ ge_ logical_and logical_or logical_not logical_xor
        bitwise_and bitwise_or bitwise_not bitwise_xor isfinite isinf isnan nan_to_num
        warn is_grad_enabled is_autocast_enabled dim size numel stride sym_size sym_numel sym_stride is_contiguous is_floating_point is_complex device dtype
        _shape_as_tensor item _local_scalar_dense
        tensor scalar_tensor zeros zeros_like ones ones_like full full_like fill_ zero_ arange linspace
        new_ones new_zeros new_full new_tensor eye tril triu one_hot clone detach detach_ contiguous to type_as float double half bfloat16
        int long short bool char byte copy_ requires_grad_
        view view_as reshape reshape_as flatten unflatten squeeze squeeze_ unsqueeze unsqueeze_ permute
        transpose transpose_ t numpy_T mT movedim swapaxes expand expand_as repeat repeat_interleave
        tile cat concat concatenate stack hstack vstack split_with_sizes 
        chunk tensor_split unbind narrow select slice flip roll diagonal diag
        index_select index_put index_put_ gather take masked_select masked_fill masked_fill_ where clamp clamp_ clamp_min
        clamp_min_ clamp_max clamp_max_ clip maximum minimum max min amax amin argmax argmin topk sort argsort kthvalue
        sum mean prod std var std_mean var_mean norm linalg_vector_norm frobenius_norm cumsum cumprod
        cummax cummin logcumsumexp
        logsumexp all any count_nonzero
        sin cos tan asin acos atan atan2 sinh cosh tanh tanh_ sigmoid sigmoid_ erf erfc exp2 expm1
        rsqrt reciprocal square lerp addcmul addcdiv hypot
        relu relu_ relu6 leaky_relu leaky_relu_ elu elu_ selu celu gelu silu silu_ mish mish_ hardswish
        hardswish_ hardsigmoid hardsigmoid_ hardtanh hardtanh_ softplus softsign prelu _prelu_kernel
        glu logsigmoid threshold threshold_ softmax log_softmax _softmax _log_softmax
        matmul mm bmm addmm addmv addbmm baddbmm mv dot outer einsum linear bilinear _trilinear
        conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d _convolution convolution
        _convolution_mode batch_norm instance_norm layer_norm native_layer_norm group_norm
        native_group_norm native_batch_norm _native_batch_norm_legit_no_training
        dropout dropout_ feature_dropout alpha_dropout embedding normalize cosine_similarity
        pairwise_distance cdist
        max_pool1d max_pool2d max_pool3d max_pool1d_with_indices max_pool2d_with_indices
        max_pool3d_with_indices avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d
        adaptive_avg_pool2d adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d
        _adaptive_avg_pool2d
        pad constant_pad_nd reflection_pad1d reflection_pad2d replication_pad1d replication_pad2d
        pixel_shuffle pixel_unshuffle channel_shuffle upsample_nearest1d upsample_nearest2d
        upsample_nearest3d upsample_linear1d upsample_bilinear2d upsample_bicubic2d upsample_trilinear3d
        _upsample_nearest_exact1d _upsample_nearest_exact2d _upsample_nearest_exact3d
        _upsample_bilinear2d_aa _upsample_bicubic2d_aa _upsample_lanczos2d_aa
        scaled_dot_product_attention _scaled_dot_product_attention_math _native_multi_head_attention
        _transformer_encoder_layer_fwd _masked_softmax
        lstm gru rnn_tanh rnn_relu lstm_cell gru_cell rnn_tanh_cell rnn_relu_cell
        quantize_per_tensor quantize_per_channel quantize_per_tensor_dynamic dequantize q_scale
        q_zero_point q_per_channel_scales q_per_channel_zero_points int_repr
        fake_quantize_per_tensor_affine fake_quantize_per_channel_affine
        _fake_quantize_learnable_per_tensor_affine _fake_quantize_learnable_per_channel_affine
        fused_moving_avg_obs_fake_quant _choose_qparams_per_tensor
        """
    ),
    # The int8 kernels our quantize passes emit (packed weights built by torch's own prepack).
    "quantized": _ops(
        """
        linear linear_relu linear_dynamic linear_relu_dynamic linear_prepack linear_unpack
        linear_prepack_fp16 linear_dynamic_fp16
        conv1d conv1d_relu conv2d conv2d_relu conv3d conv3d_relu conv_transpose1d conv_transpose2d
        conv1d_prepack conv2d_prepack conv3d_prepack conv_transpose1d_prepack conv_transpose2d_prepack
        conv2d_unpack add add_relu add_scalar add_scalar_relu mul mul_relu mul_scalar mul_scalar_relu
        cat cat_relu batch_norm batch_norm_relu batch_norm1d batch_norm2d batch_norm3d batch_norm2d_relu layer_norm group_norm
        instance_norm hardswish relu6 leaky_relu sigmoid elu threshold
        quantized_lstm_cell_dynamic quantized_gru_cell_dynamic
        """
    ),
}


def is_allowed(kind: str) -> bool:
    """Whether an op (a node kind like `aten::linear`) is on the allowlist."""
    namespace, _, name = kind.partition("::")
    return name in ALLOWED.get(namespace, frozenset())
