"""Error messages with values (a size limit, a quota, a date, a wait) shown in Swedish with the values in."""

from __future__ import annotations

import html
import io
import json
import re
import zipfile

import pytest

from allting.knowledge import parsing
from allting.platform.errors import PayloadTooLarge, TooManyRequests
from allting.web.errors import client_templates, error_message, translate_error
from allting.web.rendering import gettext_for
from allting.web.web import PARAMETERIZED_MESSAGES, WAIT_MESSAGE

MB = 1024 * 1024


def _placeholders(text: str) -> set[str]:
    return set(re.findall(r"%\((\w+)\)[sd]", text))


@pytest.mark.parametrize("template", [*PARAMETERIZED_MESSAGES, WAIT_MESSAGE])
def test_every_template_has_swedish_text_with_the_same_placeholders(template):
    swedish = gettext_for("sv")(template)
    assert swedish != template
    assert _placeholders(swedish) == _placeholders(template)


def test_a_file_over_the_size_limit_says_both_sizes_in_swedish():
    limits = parsing.ParseLimits(max_bytes=1 * MB)
    with pytest.raises(parsing.FileTooLarge) as refused:
        parsing._check_size(b"x" * int(2.5 * MB), limits)
    assert refused.value.message == "The file is 2.5 MB; the limit is 1 MB. Split it into smaller files."
    assert (
        error_message("sv", refused.value) == "Filen är 2,5 MB; gränsen är 1 MB. Dela upp den i mindre filer."
    )
    assert error_message("en", refused.value) == refused.value.message


def test_the_storage_quota_and_a_budget_are_translated_with_their_numbers():
    quota = PayloadTooLarge(
        "Your organisation's storage quota of 1000 MB is used up (999.5 MB in use; this file needs 2 MB). "
        "Delete documents you no longer need, or ask the operator to raise the quota.",
        code="quota_exceeded",
    )
    assert error_message("sv", quota) == (
        "Organisationens lagringskvot på 1\xa0000 MB är förbrukad (999,5 MB används; den här filen behöver 2 MB). "
        "Ta bort dokument som inte längre behövs, eller be driftansvarig att höja kvoten."
    )
    budget = TooManyRequests(
        "The monthly budget of 250,000 tokens for this space is used up; it resets on 2026-12-01",
        retry_after=3600,
        code="budget_exceeded",
    )
    assert error_message("sv", budget) == (
        "Utrymmets månadsbudget på 250\xa0000 token är förbrukad; den nollställs 2026-12-01"
    )
    # A budget sentence the templates do not know still says something in Swedish: its code's message.
    assert translate_error("sv", "budget_exceeded", "Budget gone").startswith("Månadens tokenbudget")


def test_a_rate_limit_says_how_many_seconds_to_wait():
    throttled = TooManyRequests("Too many sign-in attempts; try again later", retry_after=42)
    assert error_message("sv", throttled) == "För många försök. Försök igen om 42 sekunder."
    assert error_message("en", throttled) == "Too many attempts. Try again in 42 seconds."


def test_a_zip_bomb_reason_recorded_by_the_worker_is_translated():
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w", zipfile.ZIP_DEFLATED) as archive:
        for number in range(12):
            archive.writestr(f"part{number}.xml", "<a/>")
    with pytest.raises(parsing.DocumentError) as refused:
        parsing.inspect_archive(data.getvalue(), parsing.ParseLimits(max_zip_entries=10))
    assert translate_error("sv", refused.value.code, refused.value.message) == (
        "Filen innehåller 12 delar, fler än gränsen 10, vilket ser ut som en zip-bomb."
    )


def test_scripts_get_the_templates_as_javascript_patterns():
    templates = client_templates("sv")
    assert client_templates("en") == []
    size = next(t for t in templates if t["text"].startswith("Filen är %(size)s MB"))
    assert size["names"] == ["size", "limit"]
    # The pattern is JavaScript's; Python's re reads this subset the same way.
    match = re.match(size["pattern"], "The file is 60 MB; the limit is 50 MB. Split it into smaller files.")
    assert match and match.groups() == ("60", "50")


async def test_a_swedish_page_carries_the_templates_and_an_english_one_does_not(app, chat_org):
    from test_pages import sign_in

    client = await sign_in(app, chat_org.owner.email, chat_org.owner.password)
    try:
        swedish = await client.get("/", headers={"accept-language": "sv"})
        attribute = re.search(r'data-error-templates="([^"]*)"', swedish.text).group(1)
        templates = json.loads(html.unescape(attribute))
        assert any("gränsen är %(limit)s MB" in template["text"] for template in templates)
        english = await client.get("/", headers={"accept-language": "en"})
        assert "data-error-templates=" not in english.text
    finally:
        await client.aclose()
