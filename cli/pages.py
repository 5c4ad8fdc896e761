"""`convsync pages add|list|remove|new-key|rotate-key`: the pages convsync syncs.

A token is read from stdin (``--token-stdin``), a file (``--token-file``) or an
environment variable (``--token-env NAME``), never from the command line: process
arguments are visible to every user of the machine (architecture decision 11).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

pages_app = typer.Typer(help="The pages convsync syncs and their tokens.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the ``pages`` commands to ``app``."""
    app.add_typer(pages_app, name="pages")


def _read_token(stdin: bool, file: Path | None, env: str | None) -> str:
    given = [x for x in (stdin, file is not None, env is not None) if x]
    if len(given) != 1:
        raise typer.BadParameter(
            "give the token with one of --token-stdin, --token-file, --token-env"
        )
    if stdin:
        text = sys.stdin.readline()
    elif file is not None:
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as e:
            raise typer.BadParameter(f"cannot read {file}: {e.strerror}") from e
    else:
        assert env is not None
        text = os.environ.get(env, "")
        if not text:
            raise typer.BadParameter(f"the environment variable {env} is not set")
    return text.strip()


def _run(action: Any) -> Any:
    """Run ``action(conn, settings)`` on a connection; a database error is a message and
    exit status 2, never a traceback (it could name the database URL)."""
    import psycopg
    from psycopg import errors as pgerrors

    from cli.common import console, load_settings

    settings = load_settings()

    async def main() -> Any:
        async with await psycopg.AsyncConnection.connect(
            settings.database_url.get_secret_value(), autocommit=True, connect_timeout=10
        ) as conn:
            return await action(conn, settings)

    try:
        return asyncio.run(main())
    except pgerrors.UndefinedTable as e:
        console.print("[red]the schema has no pages table:[/] run `convsync migrate`")
        raise typer.Exit(2) from e
    except psycopg.Error as e:
        console.print(f"[red]database error:[/] {type(e).__name__}")
        raise typer.Exit(2) from e


@pages_app.command("add")
def add(
    page_id: Annotated[str, typer.Argument(help="The page's (or Instagram account's) id.")],
    token_stdin: Annotated[
        bool, typer.Option("--token-stdin", help="Read the token from stdin (one line).")
    ] = False,
    token_file: Annotated[
        Path | None, typer.Option("--token-file", help="Read the token from this file.")
    ] = None,
    token_env: Annotated[
        str | None, typer.Option("--token-env", help="Read the token from this variable.")
    ] = None,
    platform: Annotated[str, typer.Option(help="messenger or instagram.")] = "messenger",
    name: Annotated[str | None, typer.Option(help="A name to show.")] = None,
) -> None:
    """Add or update a page and its token (the crawler uses it without a restart)."""
    from cli.common import console
    from convsync import pages
    from convsync.errors import ConvsyncError

    token = _read_token(token_stdin, token_file, token_env)

    async def put(conn: Any, settings: Any) -> bool:
        cipher = pages.TokenCipher(settings.secret_key)
        return await pages.put_page(
            conn,
            settings.db_schema,
            cipher,
            page_id=page_id,
            platform=platform,
            name=name,
            token=token,
        )

    try:
        added = _run(put)
    except (ValueError, ConvsyncError) as e:
        console.print(f"[red]page {page_id} not stored:[/] {e}")
        raise typer.Exit(2) from e
    console.print(f"page {page_id} {'added' if added else 'updated'} (token stored encrypted)")


@pages_app.command("list")
def list_(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per page.")] = False,
) -> None:
    """List the pages, their status and their token's last success and error."""
    import orjson

    from cli.common import console
    from convsync import pages

    async def read(conn: Any, settings: Any) -> list[pages.PageInfo]:
        out: list[pages.PageInfo] = []
        after = ""
        while True:
            batch = await pages.list_pages(conn, settings.db_schema, after=after)
            out.extend(batch)
            if len(batch) < pages.MAX_LIST:
                return out
            after = batch[-1].page_id

    found = _run(read)
    if as_json:
        for p in found:
            sys.stdout.write(orjson.dumps(p.to_json()).decode() + "\n")
        return
    for p in found:
        line = f"{p.page_id}  {p.platform:9}  {p.status:15}  {p.name or ''}"
        if p.status_message and p.status != "active":
            line += f"  ({p.status_message})"
        console.print(line, markup=False, highlight=False)
    console.print(f"{len(found)} page(s)")


@pages_app.command("remove")
def remove(page_id: Annotated[str, typer.Argument(help="The page's id.")]) -> None:
    """Stop syncing a page: its token is erased, its conversations stay."""
    from cli.common import console
    from convsync import pages

    async def drop(conn: Any, settings: Any) -> bool:
        return await pages.remove_page(conn, settings.db_schema, page_id)

    if not _run(drop):
        console.print(f"[red]no page {page_id}[/]")
        raise typer.Exit(1)
    console.print(f"page {page_id} removed (its data stays)")


@pages_app.command("new-key")
def new_key() -> None:
    """Print a new key for CONVSYNC_SECRET_KEY."""
    from convsync.pages import TokenCipher

    sys.stdout.write(TokenCipher.new_key() + "\n")


@pages_app.command("rotate-key")
def rotate_key() -> None:
    """Encrypt every stored token with the first key of CONVSYNC_SECRET_KEY (put the new
    key first, keep the old one after it until this has run)."""
    from cli.common import console
    from convsync import pages

    async def rotate(conn: Any, settings: Any) -> int:
        cipher = pages.TokenCipher(settings.secret_key)
        return await pages.rotate_keys(conn, settings.db_schema, cipher)

    console.print(f"{_run(rotate)} token(s) encrypted with the first key")
