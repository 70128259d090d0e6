"""Helpers for the browser tests."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

AXE = Path(__file__).resolve().parents[2] / "node_modules" / "axe-core" / "axe.min.js"
# Screenshots go to one scratch folder, overwritten by each run; refresh the ones in docs/ with
# ALLTING_SCREENSHOT_DIR=docs/screenshots make test-slow
SCREENSHOTS = Path(
    os.environ.get("ALLTING_SCREENSHOT_DIR") or Path(tempfile.gettempdir()) / "allting-screenshots"
)


async def sign_in(page, live_url: str, email: str, password: str) -> None:
    await page.goto(f"{live_url}/login")
    await page.get_by_label("E-mail").fill(email)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"{live_url}/")


async def serious_violations(page) -> list[dict]:
    """axe-core's serious and critical violations on the page as it is now."""
    await page.add_script_tag(path=str(AXE))
    result = await page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:5]}
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


async def wait_for_ready_document(row, client, timeout_ms: int = 30_000) -> None:
    """Wait for a document's row to show it ready; if it does not, fail with what the API and the
    job queue say, so a slow or failed ingestion, or a queue busy with other organisations' jobs, can
    be told apart from a page that missed its live update."""
    from playwright.async_api import TimeoutError as PlaywrightTimeout
    from sqlalchemy import text

    from allting.platform.db import system_transaction

    try:
        await row.wait_for(timeout=timeout_ms)
    except PlaywrightTimeout:
        jobs = (await client.get("/api/v1/jobs/")).json()
        async with system_transaction() as db:
            unfinished = (
                await db.execute(
                    text(
                        "SELECT task, status, count(*) FROM jobs"
                        " WHERE status IN ('queued', 'running') GROUP BY task, status"
                    )
                )
            ).all()
        raise AssertionError(
            f"no ready row within {timeout_ms} ms; the caller's jobs: {jobs};"
            f" unfinished jobs of every organisation: {[tuple(row) for row in unfinished]}"
        ) from None
