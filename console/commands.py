"""The subcommands: `send`, `health`, `worker`, `replay`, `attach` and `serve`.

Each has an `add_<name>` that declares its options on the subparser `register` gives it, and a function of
the same name that runs it with the parsed arguments; `console.cli.build_parser` builds the one tree.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from console.output import EXIT_FAILURE, EXIT_INPUT_REJECTED, EXIT_OK, EXIT_USAGE, setup_logging
from core import interpreter
from core.config import Settings


def register(subparsers) -> None:
    """Declare every subcommand on the console's parser."""
    for name, declare, run in (("send", add_send, send), ("health", add_health, health),
                               ("worker", add_worker, worker), ("replay", add_replay, replay),
                               ("attach", add_attach, attach),
                               ("serve", add_serve, serve)):
        summary = run.__doc__.strip().splitlines()[0]
        parser = subparsers.add_parser(name, help=summary, description=summary, epilog=_EPILOGS[name])
        declare(parser)
        parser.set_defaults(run=run)


def add_send(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE",
                        help="JSON array, JSON Lines (.jsonl/.ndjson) or .json files to send, in order")
    _server_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=1000, metavar="N",
                        help="users per gRPC message and RQ job on the server (default 1000)")


def send(args: argparse.Namespace) -> int:
    """Stream files to a running server, the way the watcher does, and print the server's state for each."""
    import time

    import grpc

    from core.intake.client import UsersClient

    code = EXIT_OK
    with UsersClient(args.server, tls_ca=args.tls_ca, token=args.token, server_name=args.tls_server_name) as client:
        try:
            client.wait_ready(timeout=args.timeout)
        except grpc.FutureTimeoutError:
            print(f"send: no gRPC server answers at {args.server}", file=sys.stderr)
            return EXIT_FAILURE
        for path in args.files:
            if not path.is_file():
                print(f"{path}: not a readable file")
                code = EXIT_INPUT_REJECTED
                continue
            # "busy": the same content is arriving from another sender (or a stream of ours that was just cut
            # is still being closed on the server); it is sent again once that one is done.
            deadline = time.monotonic() + max(args.timeout, 1.0)
            while True:
                try:
                    result = client.send_file(path, batch_size=args.batch_size)
                except grpc.RpcError as error:
                    print(f"{path}: server refused the stream: {error.code().name}: {error.details()}",
                          file=sys.stderr)
                    return EXIT_FAILURE
                except OSError as error:
                    result = None
                    print(f"{path}: cannot read it: {error.strerror or error}")
                    code = EXIT_INPUT_REJECTED
                    break
                if result.state != "busy" or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            if result is None:
                continue
            if result.state == "already ingested":
                print(f"{path}: already ingested (id {result.file_id}); nothing sent")
                continue
            if result.state == "busy":
                print(f"{path}: busy: the same content is being received from another sender; send it again later")
                code = EXIT_FAILURE
                continue
            line = (f"{path}: {result.records} records, {result.accepted} accepted, {result.rejected} rejected "
                    f"in {result.seconds:.2f} s; {result.state or 'sent'} (id {result.file_id})")
            if result.damage:
                line += f"; {result.damage}"
            print(line)
            for record, reason in result.reasons[:5]:
                print(f"  record {record}: {reason}")
            if result.rejected or result.damage:
                code = EXIT_INPUT_REJECTED
    return code


def add_health(parser: argparse.ArgumentParser) -> None:
    _server_arguments(parser)


def health(args: argparse.Namespace) -> int:
    """Ask a running server's gRPC health service whether it is serving (for healthchecks and scripts)."""
    import grpc

    from core.intake.client import UsersClient

    with UsersClient(args.server, tls_ca=args.tls_ca, token=args.token, server_name=args.tls_server_name) as client:
        try:
            status = client.health(timeout=args.timeout)
        except grpc.RpcError as error:
            print(f"health: {args.server}: {error.code().name}: {error.details()}", file=sys.stderr)
            return EXIT_FAILURE
    print(f"health: {args.server}: {status}")
    return EXIT_OK if status == "SERVING" else EXIT_FAILURE


_EPILOGS = {
    "send": f"Each file's line says the server's state: queued (merging), merged, rejected, or already ingested "
            f"(the server has that content, under any name; nothing sent). A file cut off earlier is resumed. "
            f"Exit codes: {EXIT_OK} every record accepted; {EXIT_INPUT_REJECTED} some records rejected or a file damaged "
            f"(its valid records were kept); {EXIT_FAILURE} no server, or it refused the stream.",
    "health": f"Exit codes: {EXIT_OK} serving; {EXIT_FAILURE} not serving or no answer.",
    "worker": f"Exit codes: {EXIT_OK} stopped by SIGTERM/SIGINT after current jobs; {EXIT_USAGE} bad usage; "
              f"{EXIT_FAILURE} Redis unreachable.",
    "replay": f"Exit codes: {EXIT_OK} moved back; {EXIT_USAGE} no such file in quarantine.",
    "attach": f"Everything shown is read from the pipeline's Redis; scaling, restarting, pausing the watcher and "
              f"replaying are requests its owner (the `--no-ui` or console process running it) carries out and "
              f"answers. Quitting leaves the pipeline running. Exit codes: {EXIT_OK} quit; {EXIT_USAGE} bad usage; "
              f"{EXIT_FAILURE} Redis unreachable.",
    "serve": f"Each browser tab runs its own `attach` console, which ends with the tab. With --token, open the "
             f"page once as http://HOST:PORT/?token=SECRET (the browser keeps it in a cookie). Exit codes: "
             f"{EXIT_OK} stopped by SIGTERM/SIGINT; {EXIT_USAGE} bad usage (off loopback without a token, or "
             f"without TLS or --insecure); {EXIT_FAILURE} Redis unreachable or the port in use.",
}


def _server_arguments(parser: argparse.ArgumentParser) -> None:
    """How a client command reaches the server: address, timeout, TLS and token."""
    parser.add_argument("--server", default=os.environ.get("SWORDSEC_SERVER", "127.0.0.1:50051"), metavar="HOST:PORT",
                        help="gRPC server HOST:PORT (default 127.0.0.1:50051) [env SWORDSEC_SERVER]")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                        help="seconds to wait for the server to answer (default 10)")
    parser.add_argument("--tls-ca", type=Path, default=os.environ.get("SWORDSEC_TLS_CA") or None, metavar="PEM",
                        help="use TLS, trusting this CA or self-signed server certificate [env SWORDSEC_TLS_CA]")
    parser.add_argument("--tls-server-name", default=os.environ.get("SWORDSEC_TLS_SERVER_NAME") or None,
                        metavar="NAME", help="name to verify in the server certificate, when it is not the --server "
                                             "host [env SWORDSEC_TLS_SERVER_NAME]")
    parser.add_argument("--token", default=os.environ.get("SWORDSEC_TOKEN") or None, metavar="SECRET",
                        help="send `authorization: Bearer SECRET` (prefer the env: flags show in `ps`) "
                             "[env SWORDSEC_TOKEN]")


def _env(name: str) -> str:
    return f" [env {Settings.ENV[name]}]"


def add_worker(parser: argparse.ArgumentParser) -> None:
    # No defaults here: None means "not given", and Settings.build fills in the same defaults and variables
    # as the main command's (--count like --workers, --mode like --worker-mode).
    parser.add_argument("--redis-url", help="the shared Redis (required)" + _env("redis_url"))
    parser.add_argument("--count", type=int, dest="workers", metavar="N",
                        help="worker processes to run (default: number of CPUs)" + _env("workers"))
    parser.add_argument("--namespace", help="queue and key namespace (default swordsec)" + _env("namespace"))
    parser.add_argument("--mode", choices=("inline", "fork"), dest="worker_mode",
                        help="inline (default) runs jobs in the worker; fork gives each job a work-horse"
                             + _env("worker_mode"))
    parser.add_argument("--log-format", choices=("text", "json"), help="log line format (default text)"
                        + _env("log_format"))


def _settings(args: argparse.Namespace, *names: str) -> Settings:
    """The command's own flags over the environment over the defaults, as the main command resolves them."""
    return Settings.build({name: getattr(args, name) for name in names}, listens=False)


def worker(args: argparse.Namespace) -> int:
    """Run RQ workers only, for machines that share the console's Redis."""
    from core.ops.events import EventLog
    from core.queue.supervisor import Supervisor
    from core.storage.broker import connect, redact

    settings = _settings(args, "redis_url", "workers", "namespace", "worker_mode", "log_format")
    if not settings.redis_url:
        print("worker: give the shared Redis with --redis-url or REDIS_URL", file=sys.stderr)
        return EXIT_USAGE
    if settings.workers < 1:
        print("worker: --count must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(settings.log_format)
    events = EventLog()
    connection = connect(settings.redis_url)
    events.emit("info", f"worker: {settings.workers} process(es) on {redact(settings.redis_url)} "
                        f"queue {settings.namespace}")
    supervisor = Supervisor(connection, settings.redis_url, settings.namespace, settings.workers,
                            on_event=events.emit, mode=settings.worker_mode)
    stopping: list[int] = []  # appended by the handlers, no lock: an Event set there can deadlock the main thread
    # SIGHUP too: a terminal closed under a hand-started `worker` stops its processes (after their current job).
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda number, _frame: stopping.append(number))
    supervisor.start()
    try:
        while not stopping:
            time.sleep(0.1)
    finally:
        events.emit("info", "worker: stopping after current jobs")
        supervisor.stop()
    return EXIT_OK


def add_replay(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="file name in <data-dir>/quarantine/")
    parser.add_argument("--data-dir", type=Path, metavar="DIR",
                        help="the console's data folder, whose quarantine/ holds the file (default ./data)"
                             + _env("data_dir"))
    parser.add_argument("--watch", type=Path, metavar="DIR",
                        help="the watched folder the file goes back to (default ./drop)" + _env("watch"))


def replay(args: argparse.Namespace) -> int:
    """Put a fixed quarantined file back into the watched folder, where it is ingested again."""
    from core.intake.quarantine import replay_file

    settings = _settings(args, "data_dir", "watch")
    try:
        target = replay_file(settings.data_dir, settings.watch, args.name)
    except FileNotFoundError as error:
        print(f"replay: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(f"replay: {args.name} moved to {target}; the console ingests it from there")
    return EXIT_OK


# An attached console only watches: on a machine it shares with the pipeline it must not take CPU the pipeline
# needs (drawing a busy dashboard costs a third of a core), so it runs at a lower priority (bench/attach.py).
ATTACH_NICE = 10


def yield_cpu() -> None:
    try:
        os.nice(ATTACH_NICE)
    except OSError:  # not allowed here: the console still works, at the usual priority
        pass


def add_attach(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", help="the pipeline's Redis (required)" + _env("redis_url"))
    parser.add_argument("--namespace", help="the pipeline's namespace (default swordsec)" + _env("namespace"))
    parser.add_argument("--refresh", type=float, default=1.0, metavar="SECONDS",
                        help="seconds between refreshes (default 1)")


def attach(args: argparse.Namespace) -> int:
    """Open the console on a pipeline running elsewhere, from its Redis: watch it, and control it through its owner."""
    from console.app import make_app
    from core.ops.attached import AttachedRuntime

    settings = _settings(args, "redis_url", "namespace")
    if not settings.redis_url:
        print("attach: give the pipeline's Redis with --redis-url or REDIS_URL", file=sys.stderr)
        return EXIT_USAGE
    if not args.refresh > 0:
        print("attach: --refresh must be a positive number of seconds", file=sys.stderr)
        return EXIT_USAGE
    runtime = AttachedRuntime(settings).start()  # before the screen: a Redis that does not answer is one line
    yield_cpu()
    try:
        app = make_app(runtime, refresh=args.refresh, start_runtime=False, on_ready=interpreter.settle)
        app.run()
    finally:
        runtime.stop()
    return app.return_code or EXIT_OK


SERVE_TOKEN_VARIABLE = "SWORDSEC_SERVE_TOKEN"


def add_serve(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", default="127.0.0.1:8000", metavar="HOST:PORT",
                        help="address of the web page (default 127.0.0.1:8000); off loopback needs --token, and "
                             "TLS or --insecure")
    parser.add_argument("--redis-url", help="the pipeline's Redis (required)" + _env("redis_url"))
    parser.add_argument("--namespace", help="the pipeline's namespace (default swordsec)" + _env("namespace"))
    parser.add_argument("--token", default=os.environ.get(SERVE_TOKEN_VARIABLE) or None, metavar="SECRET",
                        help="the page answers 401 without it; give it once as ?token=SECRET (prefer the env: "
                             f"flags show in `ps`) [env {SERVE_TOKEN_VARIABLE}]")
    parser.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve https with this certificate"
                        + _env("tls_cert"))
    parser.add_argument("--tls-key", type=Path, metavar="PEM", help="private key of --tls-cert" + _env("tls_key"))
    parser.add_argument("--insecure", action="store_true", default=None,
                        help="allow plain http off loopback (the token travels in clear)" + _env("insecure"))


def serve(args: argparse.Namespace) -> int:
    """Serve the attached console to web browsers (textual-serve): one `attach` per tab, none starts a pipeline."""
    import asyncio
    import ssl

    from console.web.guard import check_listen
    from console.web.server import ConsoleServer, serve_until_signalled, tls_context
    from console.web.sessions import session_command
    from core.config import ConfigError, parse_address
    from core.storage.broker import connect, redact

    settings = _settings(args, "redis_url", "namespace", "tls_cert", "tls_key", "insecure")
    if not settings.redis_url:
        print("serve: give the pipeline's Redis with --redis-url or REDIS_URL", file=sys.stderr)
        return EXIT_USAGE
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise ConfigError("TLS needs both --tls-cert and --tls-key")
    host, port = parse_address(args.listen, "listen address")
    check_listen(host, token=args.token, tls=settings.tls, insecure=settings.insecure)
    try:
        tls = tls_context(settings.tls_cert, settings.tls_key) if settings.tls else None
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(f"cannot use --tls-cert/--tls-key: {getattr(error, 'strerror', None) or error}") from None
    # Fail here, in one line, rather than in every browser tab.
    connect(settings.redis_url).close()
    argv, environment = session_command(settings.redis_url, settings.namespace)
    server = ConsoleServer(argv, environment, token=args.token, title=f"swordsec-console {settings.namespace}")
    setup_logging("text")

    def announce(url: str) -> None:
        guard = "token required" if args.token else "no token: this machine only"
        print(f"serve: the console of {redact(settings.redis_url)} (namespace {settings.namespace}) at {url} "
              f"({guard})", flush=True)

    asyncio.run(serve_until_signalled(server, host, port, tls, announce))
    return EXIT_OK
