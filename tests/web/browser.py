"""Debian's chromium, driven through chromium-driver (Selenium), for the pages under /ui.

Never a downloaded browser: the binaries are the Debian packages scripts/bootstrap.sh --test
installs. Without them the tests skip only when TRUSTPLANE_NO_APT=1 (the packages were not
meant to be installed) and fail otherwise, and always under CI=true.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
)


def binaries() -> tuple[str, str] | None:
    """(chromium, chromedriver), or None when either is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


def required() -> tuple[str, str]:
    found = binaries()
    if found is not None:
        return found
    why = (
        "chromium and chromium-driver are not installed (scripts/bootstrap.sh --test installs them)"
    )
    if os.environ.get("CI", "").lower() != "true" and os.environ.get("TRUSTPLANE_NO_APT") == "1":
        pytest.skip(why + "; TRUSTPLANE_NO_APT=1")
    pytest.fail(why)


@contextmanager
def chromium(chromium_path: str, driver_path: str) -> Iterator[webdriver.Chrome]:
    """A headless chromium with a fresh profile, its console log kept (CSP violations show
    there)."""
    with tempfile.TemporaryDirectory(prefix="tp-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = chromium_path
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        service = Service(executable_path=driver_path, log_output=str(Path(profile) / "driver.log"))
        driver = webdriver.Chrome(options=options, service=service)
        driver.set_page_load_timeout(30)
        try:
            yield driver
        finally:
            driver.quit()


def wait(driver: webdriver.Chrome, timeout: float = 15) -> WebDriverWait[webdriver.Chrome]:
    return WebDriverWait(driver, timeout)
