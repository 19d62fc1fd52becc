"""The Slicer module's translations for the texts that live here rather than in ScancoUnits.py.

``tr(text)`` gives what ``slicer.i18n.tr`` gives in ScancoUnits.py: the translation in the module's context
("ScancoUnits", the module file's name), kept only when it has the same ``{placeholders}`` as the text.
Without the Slicer application (headless) the text comes back unchanged.
"""

from __future__ import annotations

import logging
import re
from typing import Callable, Optional, Set

#: the translation context of the module file (slicer.i18n.getContext of ScancoUnits.py: no __init__.py there)
CONTEXT = "ScancoUnits"

# a replacement field, not one escaped by double braces (slicer.i18n.tr's findBracedStrings)
_PLACEHOLDER = re.compile(r"(?<!\{)\{([^\{\}]+)\}(?!\})")


def placeholders(text: str) -> Set[str]:
    """The ``{name}`` replacement fields of a format string (``{{`` ... ``}}`` excluded)."""
    return set(_PLACEHOLDER.findall(text))


def checked_translation(text: str, translated: str) -> str:
    """``translated`` when it keeps the placeholders of ``text`` (a translated field name would fail at
    ``.format``), else ``text`` (with a warning in the log, as slicer.i18n.tr)."""
    if placeholders(translated) == placeholders(text):
        return translated
    logging.warning(f"In context '{CONTEXT}', translation of '{text}' to '{translated}' is incorrect: "
                    "placeholders do not match")
    return text


def tr(text: str, translate: Optional[Callable[[str, str], str]] = None) -> str:
    """``text`` in the user's language (context :data:`CONTEXT`); ``translate``: for tests, else
    ``slicer.i18n.translate`` (the text itself where slicer.i18n cannot be imported)."""
    if translate is None:
        try:
            from slicer.i18n import translate
        except ImportError:
            return text
    return checked_translation(text, translate(CONTEXT, text))
