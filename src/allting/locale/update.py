"""Rebuild sv/LC_MESSAGES/messages.po from messages.pot and sv_translations.txt (tab-separated).

Run after `pybabel extract -F babel.cfg -k _ --no-location -o src/allting/locale/messages.pot src/allting`.
The app compiles the .po in memory at start-up, so no .mo is committed or built.
"""

from __future__ import annotations

import sys
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.pofile import read_po, write_po

HERE = Path(__file__).resolve().parent


def main() -> int:
    with (HERE / "messages.pot").open("rb") as handle:
        template = read_po(handle)
    pairs = {}
    for line in (HERE / "sv_translations.txt").read_text(encoding="utf-8").splitlines():
        if "\t" in line:
            source, target = line.split("\t", 1)
            pairs[source] = target
    catalog = Catalog(locale="sv", project="Allting")
    missing = []
    for message in template:
        if not message.id:
            continue
        catalog.add(message.id, pairs.get(message.id, ""), flags=message.flags)
        if message.id not in pairs:
            missing.append(message.id)
    target = HERE / "sv" / "LC_MESSAGES" / "messages.po"
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as handle:
        write_po(handle, catalog, width=110)
    for message_id in missing:
        print(f"untranslated: {message_id}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
