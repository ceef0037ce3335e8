"""API keys: `iotpipe keys create`, `keys list`, `keys revoke`."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from iotpipe.cli import JsonFlag, app, get_app, print_json, say, untrusted

keys_app = typer.Typer(
    help="API keys for the HTTP API: create (the token is shown once), list, revoke.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@keys_app.command("create")
def keys_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A name to recognise the key by (unique).", show_default=False)],
    role: Annotated[
        str,
        typer.Option(
            "--role", help="reader, writer, operator or admin (each may do what the one before may)."
        ),
    ] = "reader",
    device: Annotated[
        list[str] | None,
        typer.Option(
            "--device",
            help="Scope a writer key to this device (repeat for several); e.g. thingspeak-1234 for a "
            "ThingSpeak channel's write key.",
            show_default=False,
        ),
    ] = None,
    expires: Annotated[
        str | None, typer.Option("--expires", help="Expire after 90d, 12h, 1y ... or at an ISO time.")
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Create an API key and print its token: it is shown this once, only its hash is kept."""
    key = get_app(ctx).create_key(name, role, device, expires)
    if json_output:
        print_json(key)
        return
    scope = f" for {', '.join(untrusted(d) for d in key['devices'])}" if key["devices"] else ""
    expiry = f", expires {key['expires_at']}" if key["expires_at"] else ""
    say(f"Created {key['role']} key {untrusted(key['name'])!r}{scope}{expiry}.")
    say("Its token (shown only now; store it safely):")
    # Written as is: the one output a secret belongs in (say() would mask it).
    sys.stdout.write(key["token"] + "\n")


@keys_app.command("list")
def keys_list(ctx: typer.Context, json_output: JsonFlag = False) -> None:
    """List keys: name, token prefix, role, devices, status, expiry, last use."""
    keys = get_app(ctx, existing=True).list_keys()
    if json_output:
        print_json(keys)
        return
    if not keys:
        say(
            "No API keys: the API is open on loopback addresses. `iotpipe keys create NAME --role ROLE` makes one."
        )
        return
    from rich.table import Table

    from iotpipe.cli import consoles

    table = Table("name", "prefix", "role", "devices", "status", "expires", "last used")
    for k in keys:
        table.add_row(
            untrusted(k["name"]),
            k["prefix"] + "…",
            k["role"],
            untrusted(", ".join(k["devices"] or ["all"])),
            k["status"],
            k["expires_at"] or "never",
            k["last_used_at"] or "never",
        )
    consoles.out.print(table, markup=False)


@keys_app.command("revoke")
def keys_revoke(
    ctx: typer.Context,
    name: Annotated[
        str, typer.Argument(help="The key's name (see `iotpipe keys list`).", show_default=False)
    ],
    json_output: JsonFlag = False,
) -> None:
    """Revoke a key: requests with it are refused from now on."""
    key = get_app(ctx, existing=True).revoke_key(name)
    if json_output:
        print_json(key)
    else:
        say(f"Key {untrusted(key['name'])!r} revoked at {key['revoked_at']}.")


app.add_typer(keys_app, name="keys", rich_help_panel="Maintain")
