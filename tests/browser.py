"""Debian's Chromium driven by Playwright: never a browser build a tool downloads.

The flags keep a headless Chromium off the network it would otherwise reach for (this
machine has none: without them it fails lookups and retries connections at every start),
and --no-sandbox lets it run as root, as CI does.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless=new",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--metrics-recording-only",
]


@contextmanager
def chromium() -> Iterator[Any]:
    """A Playwright Browser on /usr/bin/chromium (installed by `make install`)."""
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        raise RuntimeError(f"{CHROMIUM} is missing: `make install` installs Debian's chromium package")
    flags = [*FLAGS, "--no-sandbox"] if os.geteuid() == 0 else FLAGS
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=flags)
        try:
            yield browser
        finally:
            browser.close()
