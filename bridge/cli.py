"""The ``mimi-bridge`` command: run the bridge, or write its appservice registration.

Exit status: 0 after a clean stop (SIGTERM/SIGINT), 1 on a runtime failure, 2 on a config
error (one line naming the key and the problem, no traceback)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from . import config as cfgmod

EXIT_OK, EXIT_RUNTIME, EXIT_CONFIG = 0, 1, 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mimi-bridge",
        description="A Matrix application service that bridges Matrix rooms with IRC, XMPP and "
        "other networks through connector plugins.",
        epilog="Exit status: 0 clean stop, 1 runtime failure, 2 configuration error.",
    )
    p.add_argument("--version", action=_Version, help="show the version and exit")
    p.add_argument(
        "role",
        nargs="?",
        choices=["worker"],
        help="worker: run the connectors for a core in scale-out mode (scale.nats_url;"
        " docs/scale-out.md)",
    )
    p.add_argument(
        "-c",
        "--config",
        type=Path,
        default=Path("config.yaml"),
        help="the bridge's config file (default: config.yaml)",
    )
    p.add_argument(
        "-g",
        "--generate-registration",
        action="store_true",
        help="generate fresh tokens, store them in the config and write the registration file",
    )
    p.add_argument(
        "-r",
        "--registration",
        type=Path,
        default=Path("registration.yaml"),
        help="where -g writes the appservice registration (default: registration.yaml)",
    )
    p.add_argument(
        "--upgrade-config",
        action="store_true",
        help="rewrite the config in this release's layout and comments, keeping its values"
        " (the old file is kept as <config>.bak)",
    )
    p.add_argument(
        "--show-recovery-key",
        action="store_true",
        help="print the recovery key of the bot's cross-signing keys (stored encrypted in the"
        " bridge's database) and exit",
    )
    return p


def version() -> str:
    """The installed distribution's version (pyproject.toml's, once installed)."""
    # Imported here: reading the distributions' metadata costs about 2 MiB kept for the life
    # of the process, and only --version needs it.
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("mimi-bridge")
    except PackageNotFoundError:
        return "unknown (not installed)"


class _Version(argparse.Action):
    """``--version``, asking for the version only when it is given."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        print(f"{parser.prog} {version()}")
        parser.exit()


def setup_logging(cfg: dict[str, Any]) -> None:
    if "version" in cfg:
        from logging.config import dictConfig  # only for a dictConfig-style section

        dictConfig(cfg)
        return
    level = str(cfg.get("level", "INFO")).upper()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if cfg.get("file"):
        handlers.append(logging.FileHandler(str(cfg["file"]), encoding="utf-8"))
    logging.basicConfig(
        level=level,
        handlers=handlers,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    # aiohttp's access log and mautrix's request log are noise at INFO.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("mimi.api").setLevel(logging.WARNING)
    # asyncpg repeats a warning with a traceback for every try to reconnect while PostgreSQL
    # is down; the bridge logs the outage itself, once (bridge/db/resilient.py).
    logging.getLogger("asyncpg.pool").setLevel(logging.ERROR)


async def run(cfg: cfgmod.BridgeConfig) -> int:
    from .bridge import Bridge, StartupError
    from .db import DatabaseUnavailable

    bridge = Bridge(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log = logging.getLogger("mimi")
    try:
        starting = asyncio.create_task(bridge.start())
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({starting, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if starting in done:
            starting.result()
            await stop.wait()
        else:
            starting.cancel()
        log.info("stopping")
        return EXIT_OK
    except (StartupError, DatabaseUnavailable) as e:
        log.error("cannot start: %s", e)
        return EXIT_RUNTIME
    except cfgmod.ConfigError as e:
        print(f"mimi-bridge: config error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except Exception:
        log.exception("the bridge failed")
        return EXIT_RUNTIME
    finally:
        await bridge.stop()


async def show_recovery_key(cfg: cfgmod.BridgeConfig) -> int:
    from .credentials import CredentialError
    from .crypto.cross_signing import read_recovery_key
    from .db import DatabaseUnavailable

    try:
        key = await read_recovery_key(cfg.database, cfg.credentials_key)
    except DatabaseUnavailable as e:
        print(f"mimi-bridge: cannot read the recovery key: {e}", file=sys.stderr)
        return EXIT_RUNTIME
    except CredentialError:
        print(
            "mimi-bridge: the stored recovery key cannot be opened: was"
            " bridge.credentials_key changed?",
            file=sys.stderr,
        )
        return EXIT_RUNTIME
    if key is None:
        print(
            "mimi-bridge: no recovery key is stored: the bot's device is cross-signed at the"
            " first start with bridge.encryption.allow: true",
            file=sys.stderr,
        )
        return EXIT_RUNTIME
    print(key)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.generate_registration:
            from .registration import generate

            reg = generate(args.config, args.registration)
            print(
                f"Wrote {args.registration} (protocols: {', '.join(reg['protocols']) or 'none'})."
                f" Tokens were stored in {args.config}."
            )
            if cfgmod.load(args.config).double_puppet.as_token:
                from .registration import double_puppet_path

                print(f"Wrote {double_puppet_path(args.registration)} (double puppeting).")
            return EXIT_OK
        if args.upgrade_config:
            from .config_upgrade import upgrade_file

            for warning in upgrade_file(args.config):
                print(f"mimi-bridge: {warning}", file=sys.stderr)
            print(f"Rewrote {args.config} (the old file is {args.config}.bak).")
            return EXIT_OK
        cfg = cfgmod.load(args.config)
        if args.show_recovery_key:
            return asyncio.run(show_recovery_key(cfg))
        if args.role == "worker" and not cfg.scale.enabled:
            raise cfgmod.ConfigError(
                "scale.nats_url", "a worker needs the NATS server of its core (docs/scale-out.md)"
            )
        from .connectors_loader import load_connector_classes

        load_connector_classes(cfg)
        cfgmod.require_tokens(cfg)
    except cfgmod.ConfigError as e:
        print(f"mimi-bridge: config error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as e:
        print(f"mimi-bridge: {e}", file=sys.stderr)
        return EXIT_RUNTIME
    setup_logging(cfg.logging)
    for warning in cfg.warnings:
        logging.getLogger("mimi.config").warning("%s", warning)
    if args.role == "worker":
        from .scale.worker import run_worker

        return asyncio.run(run_worker(cfg))
    return asyncio.run(run(cfg))


if __name__ == "__main__":
    sys.exit(main())
