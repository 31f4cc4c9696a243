"""Command line: `swordsec-console [options]` (TUI, or --no-ui), plus `send`, `health`, `worker` and `replay`."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from console.output import EXIT_FAILURE, EXIT_INPUT_REJECTED, EXIT_OK, EXIT_UNFINISHED, EXIT_USAGE, setup_logging
from core import interpreter
from core.config import Settings

# After a signal, the app gets this long to leave once the runtime is stopped; then the process leaves anyway.
# A hang-up usually means the terminal is gone, and the UI cannot draw its way out of a closed terminal.
UI_EXIT_DEADLINE = {signal.SIGTERM: 5.0, signal.SIGINT: 5.0, signal.SIGHUP: 1.0}


def _env_help(name: str) -> str:
    return f" [env {Settings.ENV[name]}]" if name in Settings.ENV else ""


EXIT_CODES = (f"Exit codes: {EXIT_OK} all input accepted; {EXIT_INPUT_REJECTED} some input was rejected or a file "
              f"was damaged (its valid records were kept); {EXIT_USAGE} bad usage or settings; "
              f"{EXIT_FAILURE} the pipeline failed (Redis unreachable, port in use, ...); {EXIT_UNFINISHED} stopped "
              f"by a signal before every accepted user was merged (they are safe in Redis and finish at the next "
              f"start).")


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("swordsec-console")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: the console's options, and the subcommands as argparse subcommands."""
    from console import commands

    parser = argparse.ArgumentParser(
        prog="swordsec-console",
        description="Collect users from JSON files dropped in a folder into Redis and one merged all_users.json, "
                    "through gRPC and RQ workers: the console (a terminal UI), or headless with --no-ui. "
                    "The commands below talk to a pipeline running elsewhere (see `swordsec-console COMMAND --help`).",
        epilog=EXIT_CODES,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    add = parser.add_argument
    add("--watch", type=Path, metavar="DIR", help="folder to watch for JSON files (default ./drop)" + _env_help("watch"))
    add("--data-dir", type=Path, metavar="DIR", help="where the embedded Redis, quarantine and output live (default ./data)"
        + _env_help("data_dir"))
    add("--output", type=Path, metavar="FILE", help="merged file (default <data-dir>/all_users.json)" + _env_help("output"))
    add("--redis-url", metavar="URL", help="use this Redis instead of starting an embedded one" + _env_help("redis_url"))
    add("--grpc-listen", metavar="HOST:PORT", help="gRPC listen address (default 127.0.0.1:50051)"
        + _env_help("grpc_listen"))
    add("--workers", type=int, metavar="N", help="RQ worker processes to run here (default: number of CPUs)"
        + _env_help("workers"))
    add("--merge-key", metavar="FIELD", help="user field that identifies a user (default email)"
        + _env_help("merge_key"))
    add("--no-ui", action="store_true", help="run headless with plain log lines")
    add("--once", action="store_true", help="with --no-ui: ingest the files now in the folder, then exit")
    add("--log-format", choices=("text", "json"), help="log line format (default text)" + _env_help("log_format"))
    add("--quiet-period", type=float, metavar="SECONDS",
        help="a file is read once unchanged for this long (default 1.0)" + _env_help("quiet_period"))
    add("--poll", action="store_true", default=None, help="poll the folder (network and WSL mounts give no events)"
        + _env_help("poll"))
    add("--after-merge", choices=("keep", "move", "delete"),
        help="what to do with a merged file: keep it (default), move it to processed/, or delete it"
        + _env_help("after_merge"))
    add("--batch-size", type=int, metavar="N", help="users per gRPC batch and RQ job (default 1000)" + _env_help("batch_size"))
    add("--max-backlog", type=int, metavar="N",
        help="back-pressure: past N queued batches the server stops reading streams until workers catch up "
             "(default 200)" + _env_help("max_backlog"))
    add("--worker-mode", choices=("inline", "fork"),
        help="inline: jobs run in the worker process (default, fastest); fork: a work-horse per job, as RQ's "
             "classic worker" + _env_help("worker_mode"))
    add("--stop-grace", type=float, metavar="SECONDS",
        help="on SIGTERM, wait this long for accepted users to be merged and all_users.json written before "
             "exiting (default 30); past it the exit code is 4" + _env_help("stop_grace"))
    sec = parser.add_argument_group("security (listening off loopback needs TLS, or --insecure)")
    sec.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve gRPC over TLS with this certificate"
                     + _env_help("tls_cert"))
    sec.add_argument("--tls-key", type=Path, metavar="PEM", help="private key of --tls-cert" + _env_help("tls_key"))
    sec.add_argument("--token", metavar="SECRET", help="require `authorization: Bearer SECRET` on every call "
                     "(prefer the environment variable: flags show in `ps`)" + _env_help("token"))
    sec.add_argument("--insecure", action="store_true", default=None,
                     help="allow plaintext gRPC and metrics on a non-loopback address (a token then travels in clear)"
                     + _env_help("insecure"))
    sec.add_argument("--max-concurrent-calls", type=int, metavar="N",
                     help="outside calls served at once; more get RESOURCE_EXHAUSTED (default 64; health checks "
                          "and the console's own watcher are never counted)" + _env_help("max_concurrent_calls"))
    sec.add_argument("--idle-timeout", type=float, metavar="SECONDS",
                     help="end a call whose client sends nothing for this long (default 60; 0 never)"
                     + _env_help("idle_timeout"))
    sec.add_argument("--max-batch-users", type=int, metavar="N",
                     help="users one message and one merge job may carry; bigger batches get RESOURCE_EXHAUSTED "
                          "(default 1000)" + _env_help("max_batch_users"))
    sec.add_argument("--max-staged-bytes", type=int, metavar="BYTES",
                     help="back-pressure in bytes: past this much staged in Redis the server stops reading "
                          "streams until workers catch up (default 268435456, 256 MiB)" + _env_help("max_staged_bytes"))
    sec.add_argument("--group-readable", action="store_true", default=None,
                     help="all_users.json and quarantined files 0640 in a 0750 data folder, for a group that "
                          "reads them (default: 0600 in 0700)" + _env_help("group_readable"))
    sec.add_argument("--metrics-listen", metavar="HOST:PORT",
                     help="serve Prometheus metrics at http://HOST:PORT/metrics (https with --tls-cert); off "
                          "loopback needs TLS or --insecure" + _env_help("metrics_listen"))
    add("--namespace", metavar="NAME", help="prefix of every Redis key, and the RQ queue name (default swordsec); "
        "pipelines sharing one Redis need different ones" + _env_help("namespace"))
    commands.register(parser.add_subparsers(title="commands", dest="command", metavar="COMMAND"))
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    flags = {k: v for k, v in vars(args).items() if k not in ("no_ui", "command")}
    return Settings.build(flags)


def _graces(settings: Settings) -> dict[int, float]:
    """How long each stop signal lets accepted work finish. SIGTERM (docker stop, systemd) and ctrl+c ask for
    a finished job: up to the grace period. SIGHUP means the terminal is gone: stop at once (running jobs
    finish, queued ones resume at the next start), so nothing outlives the terminal by more than seconds."""
    return {signal.SIGTERM: settings.stop_grace, signal.SIGINT: settings.stop_grace, signal.SIGHUP: 0.0}


def _stopped_line(outcome) -> str:
    if outcome.remaining is None:
        return "stopped before every accepted user was known to be merged (Redis did not answer); they are safe " \
               "in Redis and finish at the next start"
    if outcome.remaining:
        return (f"stopped with {outcome.remaining} accepted user(s) not merged yet; they are safe in Redis and "
                f"finish at the next start")
    return "stopped before all_users.json was brought up to date; it is written again at the next start"


def _exit_code(outcome) -> int:
    return EXIT_OK if outcome.complete else EXIT_UNFINISHED


def run_headless(settings: Settings) -> int:
    from core.runtime import Runtime

    setup_logging(settings.log_format)
    log = logging.getLogger("swordsec")
    graces = _graces(settings)
    runtime = Runtime(settings, watch=not settings.once)
    # The handlers only append here (no lock): setting an Event from a handler deadlocked a pipeline whose
    # main thread was interrupted while it held that Event's lock, inside its own wait on it.
    received: list[int] = []

    def on_signal(signum, _frame):
        if settings.once and not received:
            received.append(signum)
            raise KeyboardInterrupt  # leave run_once at once; the finally below stops what we started
        if received:
            runtime.abort_drain()  # a second signal: stop waiting, what is left finishes at the next start
        received.append(signum)

    for signum in graces:
        signal.signal(signum, on_signal)
    try:
        runtime.start()
        interpreter.settle()
        if settings.once:
            summary = runtime.run_once()
            print(summary.line(), flush=True)
            return EXIT_OK if summary.clean else EXIT_INPUT_REJECTED
        while not received:
            runtime.check()  # the embedded Redis could not be started again: exit 3 with its one line
            time.sleep(0.1)
        grace = graces.get(received[0], 0.0)
        log.info(f"stopping: finishing accepted work (up to {grace:g} s; signal again to stop now)" if grace else
                 "stopping: running jobs finish, queued ones resume at the next start")
        outcome = runtime.stop(grace=grace)
        if outcome.complete:
            log.info(f"stopped: every accepted user is merged; all_users.json holds {outcome.users} users")
            return EXIT_OK
        print(f"swordsec-console: {_stopped_line(outcome)}", file=sys.stderr, flush=True)
        return EXIT_UNFINISHED
    finally:
        for signum in graces:  # a signal now must not interrupt the stop itself: it only shortens the wait
            signal.signal(signum, lambda *_: runtime.abort_drain())
        runtime.stop()


def run_ui(settings: Settings) -> int:
    from console.app import make_app
    from core.runtime import Runtime

    runtime = Runtime(settings)
    app = make_app(runtime, on_ready=interpreter.settle)
    graces = _graces(settings)
    code: list[int] = []

    def leave(return_code: int, message: str | None = None) -> None:
        """From a thread: end the app, and the process if the app cannot end (its terminal is gone)."""
        code.append(return_code)
        try:
            app.call_from_thread(app.exit, None, return_code, message)
        except Exception:  # the app's loop is gone or not running yet
            pass

    def stop_on_signal(signum: int) -> None:
        outcome = runtime.stop(grace=graces[signum])
        exit_code = _exit_code(outcome)
        # The runtime is stopped; if the app cannot leave (its terminal was closed), the process leaves.
        deadline = threading.Timer(UI_EXIT_DEADLINE[signum], os._exit, args=(exit_code,))
        deadline.daemon = True
        deadline.start()
        leave(exit_code)

    signalled: list[int] = []

    def on_signal(signum, _frame):
        if signalled:
            runtime.abort_drain()  # a second signal: stop waiting for the merge
            return
        signalled.append(signum)
        # Stopping joins threads and waits for processes: never in a signal handler, never on the UI loop.
        threading.Thread(target=stop_on_signal, args=(signum,), name="stop-on-signal", daemon=True).start()

    def watch_fatal() -> None:
        while runtime.fatal is None:
            if runtime.stopped:  # stopped another way: nothing to watch
                return
            time.sleep(0.5)
        leave(EXIT_FAILURE, f"swordsec-console: {runtime.fatal}")

    for signum in graces:
        signal.signal(signum, on_signal)
    threading.Thread(target=watch_fatal, name="fatal-watch", daemon=True).start()
    app.run()
    runtime.stop()  # whatever ended the app (an exception included), nothing it started outlives it
    if app.return_code is not None and app.return_code != 0:
        return app.return_code
    return code[0] if code else (app.return_code or EXIT_OK)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # gRPC's C core logs to stderr on its own (bind failures, TLS handshakes); our one-line errors say it
    # better. GRPC_VERBOSITY=debug still works for whoever sets it.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    interpreter.tune()
    try:
        args = build_parser().parse_args(argv)
        if args.command:
            return args.run(args)
        if args.once and not args.no_ui:
            args.no_ui = True
        settings = _settings(args)
        return run_headless(settings) if args.no_ui else run_ui(settings)
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        return report_failure(error)


def report_failure(error: Exception) -> int:
    """Known failures become one line; anything else also gets one line, and the traceback only on request."""
    import grpc
    import redis

    from core.config import ConfigError

    if isinstance(error, ConfigError):
        print(f"swordsec-console: {error}", file=sys.stderr)
        return EXIT_USAGE
    if isinstance(error, OSError | RuntimeError | redis.RedisError):  # BrokerError is a RuntimeError
        print(f"swordsec-console: {error}", file=sys.stderr)
        return EXIT_FAILURE
    if isinstance(error, grpc.RpcError):
        print(f"swordsec-console: gRPC call failed: {error.code().name}: {error.details()}", file=sys.stderr)
        return EXIT_FAILURE
    if os.environ.get("SWORDSEC_DEBUG"):
        raise error
    print(f"swordsec-console: unexpected error: {type(error).__name__}: {error} "
          f"(set SWORDSEC_DEBUG=1 for the traceback)", file=sys.stderr)
    return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
