"""The RNN ops' shape check (optimizer_pipeline/intake/rnn_guard.py): real models give the op's own
results, forward and backward, and the direct calls that would make the kernel read or write past a
buffer are refused. Each runs in a fresh interpreter: the check is process-wide and cannot be taken
back, and the reference must be computed without it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SAME_RESULTS = textwrap.dedent(
    """
    import torch
    from torch import nn
    from torch.nn.utils.rnn import pack_padded_sequence
    from optimizer_pipeline.intake.rnn_guard import guard_rnn_ops

    torch.manual_seed(0)
    modules = [
        nn.LSTM(8, 16, 2, bidirectional=True), nn.LSTM(8, 16, batch_first=True, proj_size=4), nn.LSTM(8, 16, bias=False),
        nn.GRU(8, 16, 2), nn.RNN(8, 16, nonlinearity="relu"), nn.RNN(8, 16, bidirectional=True),
    ]
    x = torch.randn(7, 3, 8)

    def run(module):
        sequence = x.transpose(0, 1) if module.batch_first else x
        packed = pack_padded_sequence(sequence, torch.tensor([7, 5, 2]), batch_first=module.batch_first)
        return module(sequence)[0], module(x[:, 0])[0], module(packed)[0].data

    def gradients(module):
        module.zero_grad()
        run(module)[0].sum().backward()
        return [p.grad.clone() for p in module.parameters()]

    with torch.inference_mode():
        reference = [run(m) for m in modules]
    reference_grads = [gradients(m) for m in modules]
    guard_rnn_ops()
    with torch.inference_mode():
        guarded = [run(m) for m in modules]
    for (full, unbatched, packed), (g_full, g_unbatched, g_packed) in zip(reference, guarded):
        # The op's composite implementation does the fused kernel's math, but not always in its
        # order: GRU on an AVX-512 machine, or packed input that took oneDNN's kernel, differ by a
        # float rounding (3e-8 measured).
        for want, got in ((full, g_full), (unbatched, g_unbatched), (packed, g_packed)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for module, expected in zip(modules, reference_grads):
        for got, want in zip(gradients(module), expected):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    print("same")
    """
)

REFUSED = textwrap.dedent(
    """
    import torch
    from torch import nn
    from optimizer_pipeline.intake.model_ops import harden_torch
    from optimizer_pipeline.intake.rnn_guard import RnnArgumentError

    harden_torch()
    x = torch.randn(7, 3, 8)
    lstm = list(nn.LSTM(8, 16)._flat_weights)
    gru = list(nn.GRU(8, 16)._flat_weights)
    state = lambda *shape: torch.zeros(*shape)
    calls = {
        "state batch": lambda: torch.lstm(x, [state(1, 1, 16)] * 2, lstm, True, 1, 0.0, False, False, False),
        "state width": lambda: torch.lstm(x, [state(1, 3, 4)] * 2, lstm, True, 1, 0.0, False, False, False),
        "input width": lambda: torch.lstm(torch.randn(7, 3, 3), [state(1, 3, 16)] * 2, lstm, True, 1, 0.0, False, False, False),
        "layers": lambda: torch.lstm(x, [state(1, 3, 16)] * 2, lstm, True, 2, 0.0, False, False, False),
        "gru state batch": lambda: torch.gru(x, state(1, 1, 16), gru, True, 1, 0.0, False, False, False),
        "packed sizes": lambda: torch.lstm(x[:, 0], torch.tensor([5, 9]), [state(1, 9, 16)] * 2, lstm, True, 1, 0.0, False, False),
    }
    for name, call in calls.items():
        try:
            call()
        except RnnArgumentError as error:
            assert "refused before the kernel runs" in str(error), (name, str(error))
        else:
            raise AssertionError(f"{name}: ran")
    print("refused", len(calls))
    """
)


def run_fresh(script: str) -> str:
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_real_rnns_give_the_ops_own_results_forward_and_backward():
    assert run_fresh(SAME_RESULTS).strip() == "same"


def test_direct_calls_the_kernel_would_not_check_are_refused():
    assert run_fresh(REFUSED).strip() == "refused 6"
