"""Open Inference Protocol v2 over gRPC: KServe's and Triton's `inference.GRPCInferenceService`.

The messages and the service stub are the ones tritonclient[grpc] ships, generated from Triton's
grpc_service.proto, a superset of KServe's open_inference_grpc.proto with the same package, service
and field numbers: a server built on them answers KServe's clients and tritonclient.grpc alike, and
cannot drift from the client the tests use. Each API-server process runs a grpc.aio server on the
same port (SO_REUSEPORT) in the event loop of its HTTP server, and hands ModelInfer to the same
/predict workers through the same QueueBridge as REST, so batching, routing, shadow, guard and
worker-side metrics are shared.
"""

from .service import check_port_free, grpc_lifespan

__all__ = ["check_port_free", "grpc_lifespan"]
