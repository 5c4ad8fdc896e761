"""The ``convsync`` command line: stack, migrations, status, demo and every component."""

import json
import os
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cli.common import StateDir, console, load_settings, state_folder
from convsync.errors import ConvsyncError, StackError
from convsync.logs import setup_logging
from convsync.settings import Settings

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Keep Messenger conversations in Postgres, exactly once, via Kafka.",
)


def _secrets(settings: Settings) -> list[str]:
    return settings.secret_values()


# How _root set up logging, so a command that learns new secrets can add them.
_logging: dict[str, str] = {"level": "INFO", "format": "text"}
_redacted: list[str] = []


def _redact_also(settings: Settings) -> None:
    """Set up logging again with the secrets of ``settings`` added to the redaction."""
    _redacted.extend(s for s in _secrets(settings) if s not in _redacted)
    setup_logging(_logging["level"], secrets=_redacted, json_format=_logging["format"] == "json")


@app.callback()
def _root(
    log_level: Annotated[
        str, typer.Option(help="Log level.", envvar="CONVSYNC_LOG_LEVEL")
    ] = "INFO",
    log_format: Annotated[
        str, typer.Option(help="text or json (one object per line).", envvar="CONVSYNC_LOG_FORMAT")
    ] = "text",
) -> None:
    secrets: list[str] = []
    try:
        # The stack's secrets too (its database password, its SASL password), as the
        # components read them when the environment does not set them.
        secrets = _secrets(load_settings())
    except StackError:
        pass  # the stack is not up yet or its files are unsafe: the command says so
    except Exception as e:  # noqa: BLE001 - reported below; logging must still start
        console.print(f"[yellow]settings: {e}[/]")
    if log_format not in ("text", "json"):
        raise typer.BadParameter("--log-format must be text or json")
    _logging.update(level=log_level, format=log_format)
    _redacted[:] = secrets
    setup_logging(log_level, secrets=secrets, json_format=log_format == "json")


@app.command()
def up(
    brokers: Annotated[int, typer.Option(help="Kafka nodes: 1, or 3 for fault tests.")] = 1,
    state_dir: StateDir = None,
    kafka_port: Annotated[
        int | None,
        typer.Option(help="First broker port [default: 9092].", envvar="CONVSYNC_KAFKA_PORT"),
    ] = None,
    pg_port: Annotated[
        int | None,
        typer.Option(help="Postgres port [default: 55432].", envvar="CONVSYNC_PG_PORT"),
    ] = None,
    topic_prefix: Annotated[str, typer.Option(envvar="CONVSYNC_TOPIC_PREFIX")] = "convsync",
    partitions: Annotated[int, typer.Option(envvar="CONVSYNC_PARTITIONS")] = 12,
    sasl: Annotated[
        bool | None,
        typer.Option(
            "--sasl/--no-sasl",
            help="Kafka with a SASL_PLAINTEXT SCRAM-SHA-512 listener and a generated user "
            "[default: as the last `up` in this folder, else plain].",
        ),
    ] = None,
) -> None:
    """Start local Kafka (KRaft) and Postgres, create topics, apply migrations."""
    import time

    from deploy.stack import up as stack_up

    started = time.monotonic()
    try:
        info = stack_up(
            state_dir=state_folder(state_dir),
            brokers=brokers,
            kafka_port=kafka_port,
            pg_port=pg_port,
            topic_prefix=topic_prefix,
            partitions=partitions,
            sasl=sasl,
        )
    except ConvsyncError as e:
        console.print(f"[red]up failed:[/] {e}")
        raise typer.Exit(1) from e
    kafka = f"{info.kafka_bootstrap}{' (SASL SCRAM-SHA-512)' if info.sasl else ''}"
    console.print(
        f"[green]stack up[/] in {time.monotonic() - started:.1f}s: Kafka {kafka} "
        f"({info.brokers} node(s), rf {info.replication_factor}), Postgres {info.database_url}"
    )
    console.print(f"passwords: {info.state_dir}/*.password (0600)")
    console.print(f'settings: eval "$(convsync env --state-dir {info.state_dir})"')


@app.command()
def down(state_dir: StateDir = None) -> None:
    """Stop everything `up` started."""
    from deploy.stack import down as stack_down

    try:
        stopped = stack_down(state_dir=state_folder(state_dir))
    except ConvsyncError as e:
        console.print(f"[red]down failed:[/] {e}")
        raise typer.Exit(1) from e
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@app.command()
def env(state_dir: StateDir = None) -> None:
    """Print `export` lines for the settings of the local stack (its passwords included)."""
    import shlex

    from deploy.stack import load_info

    try:
        info = load_info(state_folder(state_dir))
        if info is None:
            console.print("[red]no stack here;[/] run `convsync up` first")
            raise typer.Exit(1)
        exports = info.exports()
    except ConvsyncError as e:
        console.print(f"[red]env failed:[/] {e}")
        raise typer.Exit(1) from e
    for key, value in exports.items():
        sys.stdout.write(f"export {key}={shlex.quote(value)}\n")


@app.command()
def migrate(
    schema: Annotated[str | None, typer.Option(help="Target Postgres schema.")] = None,
) -> None:
    """Apply the SQL migrations (also run by `up`)."""
    from convsync.db import connect
    from schemas.migrate import apply_migrations

    settings = load_settings()
    try:
        with connect(settings) as conn:
            applied = apply_migrations(conn, schema=schema or settings.db_schema)
    except ConvsyncError as e:
        console.print(f"[red]migrate failed:[/] {e}")
        raise typer.Exit(1) from e
    console.print(f"applied: {', '.join(applied) if applied else 'nothing (up to date)'}")


@app.command()
def topics(
    replication_factor: Annotated[int, typer.Option(min=1, help="Replicas per partition.")] = 1,
) -> None:
    """Create the convsync topics on the configured cluster (existing ones are kept)."""
    from convsync.kafka import admin_client, ensure_topics, topic_specs

    settings = load_settings()
    try:
        created = ensure_topics(
            admin_client(settings), topic_specs(settings, replication_factor=replication_factor)
        )
    except ConvsyncError as e:
        console.print(f"[red]topics failed:[/] {e}")
        raise typer.Exit(1) from e
    console.print(f"created: {', '.join(created) if created else 'nothing (all exist)'}")


@app.command()
def smoke(
    pages: Annotated[int, typer.Option(min=1)] = 3,
    per_page: Annotated[int, typer.Option(min=1)] = 20,
) -> None:
    """Round-trip envelopes through the running Kafka and check Postgres."""
    from cli.smoke import run_smoke

    settings = load_settings()
    try:
        result = run_smoke(settings, pages=pages, per_page=per_page)
    except ConvsyncError as e:
        console.print(f"[red]smoke failed:[/] {e}")
        raise typer.Exit(1) from e
    table = Table(title="convsync smoke")
    table.add_column("check")
    table.add_column("result")
    table.add_row("envelopes produced (acks=all)", str(result.produced))
    table.add_row("read back", str(result.read_back))
    table.add_row("pages / partitions used", f"{result.pages} / {result.partitions_used}")
    table.add_row("order kept per page", str(result.order_kept))
    table.add_row("migrations applied", str(result.migrations))
    table.add_row("seconds", f"{result.seconds:.2f}")
    Console().print(table)


@app.command()
def demo(
    pages: Annotated[int, typer.Option(min=1, help="Simulated pages.")] = 3,
    conversations: Annotated[int, typer.Option(min=1, help="Conversations per page.")] = 2000,
    webhooks: Annotated[int, typer.Option(min=0, help="Webhook bodies to send.")] = 600,
    webhook_rate: Annotated[float, typer.Option(help="Webhook bodies per second.")] = 150.0,
    crawler_workers: Annotated[int, typer.Option(min=1)] = 2,
    seed: Annotated[int, typer.Option()] = 7,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 900.0,
    stay: Annotated[
        bool | None,
        typer.Option(
            "--stay/--exit",
            help="Keep running after the summary until Ctrl-C [default: stay on a terminal].",
        ),
    ] = None,
    state_dir: StateDir = None,
) -> None:
    """Run everything against a simulated Meta and compare Postgres with the truth."""
    import signal

    from cli.demo import DemoOptions, run_demo
    from deploy.stack import up as stack_up

    def _terminate(*_: object) -> None:
        raise KeyboardInterrupt  # unwinds through the supervisor's cleanup

    signal.signal(signal.SIGTERM, _terminate)
    folder = state_folder(state_dir)
    try:
        info = stack_up(state_dir=folder)
        base = info.settings()
        _redact_also(base)
        opts = DemoOptions(
            pages=pages,
            conversations=conversations,
            webhook_bodies=webhooks,
            webhook_rate=webhook_rate,
            crawler_workers=crawler_workers,
            seed=seed,
            timeout=timeout,
        )
        keep = sys.stdout.isatty() if stay is None else stay
        result = run_demo(opts, base=base, state_dir=folder.resolve(), stay=keep)
    except KeyboardInterrupt:
        console.print("stopped (Ctrl-C); every component was shut down")
        raise typer.Exit(130) from None
    except ConvsyncError as e:
        console.print(f"[red]demo failed:[/] {e}")
        raise typer.Exit(1) from e
    if not result.ok:
        raise typer.Exit(1)


@app.command()
def run(
    gateway_port: Annotated[int, typer.Option(help="Webhook gateway port.")] = 8080,
    gateway_host: Annotated[str, typer.Option(help="Webhook gateway address.")] = "127.0.0.1",
    admin_port: Annotated[
        int,
        typer.Option(help="Admin API, dashboard and metrics port.", envvar="CONVSYNC_ADMIN_PORT"),
    ] = 8081,
    admin_host: Annotated[
        str,
        typer.Option(
            help="Admin API, dashboard and metrics address (keep it private).",
            envvar="CONVSYNC_ADMIN_HOST",
        ),
    ] = "127.0.0.1",
    crawler_workers: Annotated[int, typer.Option(min=0)] = 1,
    archive: Annotated[
        bool | None,
        typer.Option(
            "--archive/--no-archive",
            help="Also run the media archiver [default: when CONVSYNC_MEDIA_DIR is set].",
        ),
    ] = None,
    state_dir: StateDir = None,
) -> None:
    """Run gateway, crawler, materializer and streams against real Meta until Ctrl-C."""
    import signal
    import time

    from cli.supervisor import STATE_FILE, Pipeline, Supervisor, start_pipeline

    settings = load_settings()
    missing = [
        name
        for name, value in (
            ("CONVSYNC_APP_SECRET", settings.app_secret),
            ("CONVSYNC_VERIFY_TOKEN", settings.verify_token),
            ("CONVSYNC_SECRET_KEY", settings.secret_key),
        )
        if not value.get_secret_value()
    ]
    with_archiver = bool(os.environ.get("CONVSYNC_MEDIA_DIR")) if archive is None else archive
    if with_archiver and not os.environ.get("CONVSYNC_MEDIA_DIR"):
        missing.append("CONVSYNC_MEDIA_DIR (for --archive)")
    if missing:
        console.print(f"[red]run needs {', '.join(missing)}[/] (see README, 'A real page')")
        raise typer.Exit(2)
    from admin.auth import check_token

    try:
        check_token(settings.admin_token.get_secret_value())
    except ConvsyncError as e:
        console.print(f"[red]run refused:[/] {e}")
        raise typer.Exit(2) from e
    # Through the environment, never the command line: it holds secrets.
    env = {
        "CONVSYNC_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CONVSYNC_DATABASE_URL": settings.database_url.get_secret_value(),
        "CONVSYNC_TOPIC_PREFIX": settings.topic_prefix,
        "CONVSYNC_KAFKA_EXTRA": json.dumps(settings.kafka_extra_values()),
        "CONVSYNC_SECRET_KEY": settings.secret_key.get_secret_value(),
    }
    folder = state_folder(state_dir)
    sup = Supervisor(env, folder / "logs", state_file=folder / STATE_FILE)
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    try:
        start_pipeline(
            sup,
            Pipeline(
                gateway=(gateway_host, gateway_port),
                admin=(admin_host, admin_port),
                crawler_workers=crawler_workers,
                archiver=with_archiver,
                relay=bool(os.environ.get("CONVSYNC_RELAY_URL")),
            ),
        )
        console.print(
            f"running; webhook URL http://{gateway_host}:{gateway_port}/webhook; dashboard "
            f"http://{admin_host}:{admin_port}/dashboard; logs in {sup.log_dir}; a component "
            "that exits is restarted (see `convsync status`); Ctrl-C stops"
        )
        while not stopping:
            sup.watch()
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        sup.stop()


def _register_components() -> None:
    # One module of commands per component; heavy imports stay inside the command bodies.
    from cli.archiver import register as register_archiver
    from cli.crawler import register as register_crawler
    from cli.gateway import register as register_gateway
    from cli.importer import register as register_importer
    from cli.mapper import register as register_mapper
    from cli.materializer import register as register_consumers
    from cli.pages import register as register_pages
    from cli.status import register as register_status
    from cli.streams import register as register_streams

    for register in (register_gateway, register_crawler, register_consumers, register_streams):
        register(app)
    register_archiver(app)
    register_importer(app)
    register_mapper(app)
    register_pages(app)
    register_status(app)


_register_components()


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
