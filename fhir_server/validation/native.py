"""Base invariants implemented natively: they sit on (nearly) every element, or need more than
the FHIRPath evaluators do (dom-3 uses `as` on a collection and `descendants()` of the whole
resource). Used by the base-rules walk and by the profile validator.

- ele-1 `hasValue() or (children().count() > id.count())`: an element has a value or a child
  other than its id.
- ext-1 `extension.exists() != value.exists()`: an extension has either sub-extensions or a value.
- dom-3: every contained resource is referenced from the rest of the resource (or from another
  contained resource), or refers to its container (`#`).
- txt-1 / txt-2 `htmlChecks()` on Narrative.div: well-formed XHTML, a single `div` in the XHTML
  namespace (as the XML format writes it), only the HTML 4 formatting elements the narrative
  allows, no event attributes (`on...`) nor `javascript:` links (txt-1); some non-whitespace
  text or an image (txt-2).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import orjson
from lxml import etree

__all__ = ["dom3_ok", "ele1_ok", "ext1_ok", "html_checks"]

XHTML_NS = "http://www.w3.org/1999/xhtml"
# narrative.html#xhtml: the HTML 4.0 formatting elements of chapters 7-11 and 15, <a>, images.
_ALLOWED_NAMES = (
    "a abbr acronym address b bdo big blockquote br caption center cite code col colgroup dd del "
    "dfn dir div dl dt em font h1 h2 h3 h4 h5 h6 hr i img ins kbd li map area menu ol p pre q s "
    "samp small span strike strong style sub sup table tbody td tfoot th thead tr tt u ul var"
)
_ALLOWED = frozenset(_ALLOWED_NAMES.split())


def ele1_ok(value: Any) -> bool:
    if isinstance(value, dict):
        return any(k != "id" for k in value)
    return True


def ext1_ok(extension: dict[str, Any]) -> bool:
    has_value = any(k.startswith("value") for k in extension)
    return bool(extension.get("extension")) != has_value


def _references(value: Any, found: set[str]) -> None:
    """Every string in `value` that starts with '#' (local references, canonicals)."""
    if isinstance(value, dict):
        for item in value.values():
            _references(item, found)
    elif isinstance(value, list):
        for item in value:
            _references(item, found)
    elif isinstance(value, str) and value.startswith("#"):
        found.add(value)


def dom3_ok(resource: dict[str, Any]) -> bool:
    """dom-3: every contained resource is referenced from elsewhere, or refers to its container."""
    raw = resource.get("contained")
    contained = [c for c in (raw if isinstance(raw, list) else [raw]) if isinstance(c, dict)]
    if not contained:
        return True
    # Fast path: each contained id appears as a reference "#id" in the rest of the resource.
    rest = orjson.dumps({k: v for k, v in resource.items() if k != "contained"})
    if all(isinstance(c.get("id"), str) and f'"#{c["id"]}"'.encode() in rest for c in contained):
        return True
    found: set[str] = set()
    _references({k: v for k, v in resource.items() if k != "contained"}, found)
    for c in contained:
        inner: set[str] = set()
        _references(c, inner)
        found |= {r for r in inner if r != f"#{c.get('id')}"}
    for c in contained:
        own: set[str] = set()
        _references(c, own)
        if f"#{c.get('id')}" not in found and "#" not in own:
            return False
    return True


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


@lru_cache(maxsize=1024)
def html_checks(div: str) -> tuple[bool, bool]:
    """(txt-1 holds, txt-2 holds) for a narrative div; an unparsable div fails txt-1 only."""
    try:
        wrapper = etree.fromstring(f'<w xmlns="{XHTML_NS}">{div}</w>', _parser())
    except etree.XMLSyntaxError:
        return False, True
    roots = [child for child in wrapper if isinstance(child.tag, str)]
    outside = (wrapper.text or "") + "".join(child.tail or "" for child in wrapper)
    if len(roots) != 1 or roots[0].tag != f"{{{XHTML_NS}}}div" or outside.strip():
        return False, True
    allowed = True
    has_image = False
    for element in roots[0].iter():
        if not isinstance(element.tag, str):
            continue  # comments, processing instructions
        namespace, _, name = element.tag[1:].partition("}")
        if namespace != XHTML_NS or name not in _ALLOWED:
            allowed = False
        has_image = has_image or name == "img"
        for attribute, value in element.attrib.items():
            local = attribute.rpartition("}")[2].lower()
            if local.startswith("on") or (
                local in ("href", "src") and value.strip().lower().startswith("javascript:")
            ):
                allowed = False
    text = "".join(roots[0].itertext())
    return allowed, bool(text.strip()) or has_image
