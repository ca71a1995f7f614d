"""`optiserve route | promote | rollback | ab`: hand the optimized variant live traffic, and watch what it does."""

from __future__ import annotations

import argparse

from wire.contract.live import LiveStatus
from wire.contract.models import ModelStatus, RoutingEvent
from wire.contract.routing import describe_policy

from .client import OptiserveClient
from .exit_codes import ExitCode
from .server_commands import client_parser


def add_routing_commands(commands: argparse._SubParsersAction) -> None:
    route = client_parser(commands, "route", "set how requests that name no variant are served", _route)
    route.add_argument("model_id", help="model id or name")
    mode = route.add_mutually_exclusive_group(required=True)
    mode.add_argument("--split", type=_share, metavar="SHARE", help="send this share of requests (0..1) to the optimized variant")
    mode.add_argument("--shadow", type=_share, metavar="SAMPLE", help="also run this share of requests on the other variant, off the response path")
    mode.add_argument("--pin", choices=("original", "optimized"), help="send every request to one variant")
    route.add_argument("--serve", choices=("original", "optimized"), default="original", help="with --shadow: the variant that answers")
    route.add_argument("--sample", type=_share, default=0.0, help="with --split: the share of requests also compared on the other variant")
    for name, text in (("promote", "send all traffic to the optimized variant"), ("rollback", "send all traffic to the original")):
        parser = client_parser(commands, name, text, _promote if name == "promote" else _rollback)
        parser.add_argument("model_id", help="model id or name")
        parser.add_argument("--reason", default="", help="why, for the event log")
    ab = client_parser(commands, "ab", "live A/B: each variant's latency, live fidelity, drift and routing events", _ab)
    ab.add_argument("model_id", help="model id or name")


def _share(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not a share between 0 and 1")
    return value


def _route(args: argparse.Namespace, client: OptiserveClient) -> int:
    if args.split is not None:
        model = client.route(args.model_id, split=args.split, sample=args.sample)
    elif args.shadow is not None:
        model = client.route(args.model_id, shadow=args.shadow, serve=args.serve)
    else:
        model = client.route(args.model_id, pin=args.pin)
    print(f"{model.name}: {describe_policy(model.routing)}")
    return ExitCode.OK


def _promote(args: argparse.Namespace, client: OptiserveClient) -> int:
    model = client.promote(args.model_id, args.reason)
    print(f"{model.name}: {describe_policy(model.routing)}")
    return ExitCode.OK


def _rollback(args: argparse.Namespace, client: OptiserveClient) -> int:
    model = client.rollback(args.model_id, args.reason)
    print(f"{model.name}: {describe_policy(model.routing)}")
    return ExitCode.OK


def _ab(args: argparse.Namespace, client: OptiserveClient) -> int:
    print(ab_summary(client.model(args.model_id), client.events(args.model_id, limit=10)))
    return ExitCode.OK


def ab_summary(model: ModelStatus, events: list[RoutingEvent]) -> str:
    lines = [f"{model.name} (id {model.id}): {describe_policy(model.routing)}"]
    live = model.live
    if not live.requests:
        lines.append("  no live traffic recorded yet")
    else:
        lines += _live_lines(live)
    if events:
        lines.append("  events:")
        lines += [f"    {event.at}  {event.kind} by {event.trigger}: {event.reason}" for event in events]
    return "\n".join(lines)


# Shadow forwards run at the lowest priority: their wall time would be the wait for a core.
_CLOCKS = {"wall": "wall (served)", "thread_cpu": "thread CPU (shadow)"}


def _live_lines(live: LiveStatus) -> list[str]:
    rows = [("VARIANT", "REQUESTS", "P50 MS", "P99 MS", "CLOCK")]
    rows += [(e.variant, str(e.requests), f"{e.p50_ms:.3f}", f"{e.p99_ms:.3f}", _CLOCKS.get(e.clock, e.clock)) for e in live.latency]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"  last {live.requests} requests (forward time per call)"]
    lines += ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    if live.speedup is not None:
        lines.append(f"  live speed-up: {live.speedup:.2f}x")
    fidelity = live.fidelity
    if fidelity.compared:
        parts = []
        if fidelity.agreement is not None:
            parts.append(f"agreement {fidelity.agreement:.4f} (95% {fidelity.agreement_lower:.4f}..{fidelity.agreement_upper:.4f})")
        if fidelity.cosine_mean is not None:
            parts.append(f"cosine {fidelity.cosine_mean:.5f} (worst {fidelity.cosine_min:.5f})")
        if fidelity.max_abs_diff is not None:
            parts.append(f"max abs diff {fidelity.max_abs_diff:.3g}")
        lines.append(f"  live fidelity over {fidelity.compared} compared requests: " + ", ".join(parts))
    else:
        lines.append("  live fidelity: no request compared yet (route with --shadow, or --split with --sample)")
    lines.append(f"  guard: {live.guard.state}: {live.guard.reason}")
    lines += [f"  drift warning: {warning}" for warning in live.warnings]
    return lines
