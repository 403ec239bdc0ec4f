"""The dashboard page in a real headless Chromium: members and services of emulated members appear in the DOM."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from .conftest import World

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium; .ci/run installs it)"
)


async def chromium(url: str, profile: Path, *extra: str) -> str:
    """Run headless Chromium on ``url`` with ``extra`` flags; its stdout (the DOM with --dump-dom)."""
    assert CHROMIUM is not None
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
        *extra,
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "HOME": str(profile)},
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    return out.decode(errors="replace")


async def test_dashboard_shows_members_services_and_traffic(world: World, tmp_path: Path) -> None:
    p = await world.start(world.yaml())
    async with world.session.post(p.admin_url + "/api/v1/clusters/west/drain") as r:
        assert r.status == 200
    dom = await chromium(p.admin_url + "/", tmp_path / "profile", "--dump-dom")
    assert "<h1>fedproxy</h1>" in dom
    assert 'data-member="east"' in dom and 'data-member="west"' in dom  # rows drawn from /api/v1/state
    assert "demo/web" in dom
    assert "drained" in dom and "undrain" in dom  # west is drained and offers the undrain button
    assert "local 100%" in dom  # where traffic goes: the local tier takes everything
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "admin-dashboard.png"
    await chromium(p.admin_url + "/", tmp_path / "profile2", f"--screenshot={shot}", "--window-size=1280,900")
    assert shot.exists() and shot.stat().st_size > 1000


async def test_dashboard_asks_for_the_token(world: World, tmp_path: Path) -> None:
    p = await world.start(world.yaml(token="dash-token"))
    async with world.session.get(p.admin_url + "/") as r:
        assert r.status == 200  # the page itself holds no data
    dom = await chromium(p.admin_url + "/", tmp_path / "profile", "--dump-dom")
    assert "needs a token" in dom
    assert 'data-member="east"' not in dom
