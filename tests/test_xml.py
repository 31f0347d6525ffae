"""FHIR XML <-> JSON conversion: round trips, a hand-written document, errors and hardening."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from lxml import etree

from fhir_server.errors import BadRequest, FhirError
from fhir_server.formats.xml import FHIR_NS, XHTML_NS, resource_to_xml, xml_to_resource

FIXTURES = Path(__file__).parent / "fixtures" / "xml"
SYNTHEA = Path(__file__).resolve().parents[2] / "shared" / "samples" / "synthea-r4"
ROUND_TRIP = sorted(FIXTURES.glob("roundtrip-*.json"))
F = "{" + FHIR_NS + "}"


def load(path: Path) -> dict[str, Any]:
    return orjson.loads(path.read_bytes())


def child_names(element: etree._Element) -> list[str]:
    return [etree.QName(child).localname for child in element]


def parse_xml(data: bytes) -> etree._Element:
    return etree.fromstring(data, etree.XMLParser(remove_blank_text=True))


def error_of(data: bytes, status: int = 400) -> FhirError:
    """The error parsing `data` raises: 400 when it is not FHIR XML at all, 422 when it is
    well-formed XML whose content is not a valid resource (as for JSON)."""
    with pytest.raises(FhirError) as caught:
        xml_to_resource(data)
    assert caught.value.status == status
    return caught.value


def patient_xml(body: str) -> bytes:
    return f'<Patient xmlns="{FHIR_NS}">{body}</Patient>'.encode()


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("pretty", [False, True])
@pytest.mark.parametrize("path", ROUND_TRIP, ids=lambda p: p.stem)
def test_fixture_round_trip(path: Path, pretty: bool) -> None:
    resource = load(path)
    assert xml_to_resource(resource_to_xml(resource, pretty=pretty)) == resource


def test_round_trip_fixtures_exist() -> None:
    assert len(ROUND_TRIP) >= 5


@pytest.mark.skipif(not SYNTHEA.is_dir(), reason="Synthea samples not available")
@pytest.mark.parametrize(
    "path", sorted(SYNTHEA.glob("*.json")) if SYNTHEA.is_dir() else [], ids=lambda p: p.stem[:24]
)
def test_synthea_round_trip(path: Path) -> None:
    bundle = load(path)
    assert xml_to_resource(resource_to_xml(bundle)) == bundle
    for entry in bundle["entry"]:
        resource = entry["resource"]
        assert xml_to_resource(resource_to_xml(resource, pretty=True)) == resource


# --- hand-written document --------------------------------------------------------------------


def test_hand_written_xml_parses_to_expected_json() -> None:
    parsed = xml_to_resource((FIXTURES / "patient.xml").read_bytes())
    assert parsed == load(FIXTURES / "patient.json")
    assert parsed["active"] is True and parsed["telecom"][0]["rank"] == 1


def test_json_serializes_to_hand_written_xml() -> None:
    written = parse_xml(resource_to_xml(load(FIXTURES / "patient.json")))
    expected = parse_xml((FIXTURES / "patient.xml").read_bytes())
    for comment in list(expected.iter(etree.Comment)):
        comment.getparent().remove(comment)
    etree.strip_attributes(expected, "{http://www.w3.org/2001/XMLSchema-instance}schemaLocation")
    # Exclusive c14n drops the now unused xsi declaration and normalizes attribute order.
    canonical = {"method": "c14n", "exclusive": True}
    assert etree.tostring(written, **canonical) == etree.tostring(expected, **canonical)


# --- JSON -> XML details ----------------------------------------------------------------------


def test_output_is_declared_utf8_in_fhir_namespace() -> None:
    data = resource_to_xml({"resourceType": "Patient", "name": [{"family": "Zoë"}]})
    assert data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    root = parse_xml(data)
    assert root.tag == F + "Patient"
    assert root.find(f"{F}name/{F}family").get("value") == "Zoë"


def test_elements_follow_definition_order_not_json_order() -> None:
    resource = {
        "resourceType": "Patient",
        "name": [{"given": ["A"], "family": "B", "use": "official"}],
        "gender": "male",
        "id": "1",
        "text": {"div": f'<div xmlns="{XHTML_NS}">x</div>', "status": "generated"},
    }
    root = parse_xml(resource_to_xml(resource))
    assert child_names(root) == ["id", "text", "name", "gender"]
    assert child_names(root.find(F + "name")) == ["use", "family", "given"]
    assert child_names(root.find(F + "text")) == ["status", "div"]


def test_ids_and_urls_are_attributes_but_resource_id_is_an_element() -> None:
    resource = {
        "resourceType": "Patient",
        "id": "p",
        "extension": [{"id": "e", "url": "http://x", "valueString": "v"}],
    }
    root = parse_xml(resource_to_xml(resource))
    assert root.find(F + "id").get("value") == "p"
    assert root.get("id") is None
    extension = root.find(F + "extension")
    assert (extension.get("id"), extension.get("url")) == ("e", "http://x")
    assert extension.find(F + "valueString").get("value") == "v"


def test_resource_typed_elements_are_wrapped_in_the_resource_type() -> None:
    bundle = load(FIXTURES / "roundtrip-bundle.json")
    root = parse_xml(resource_to_xml(bundle))
    entries = root.findall(F + "entry")
    assert child_names(entries[0].find(F + "resource")) == ["Patient"]
    assert child_names(entries[1].find(f"{F}response/{F}outcome")) == ["OperationOutcome"]


def test_decimals_keep_their_value() -> None:
    resource = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "valueQuantity": {"value": Decimal("1.50")},
        "component": [{"code": {"text": "y"}, "valueQuantity": {"value": 0.1}}],
    }
    root = parse_xml(resource_to_xml(resource))
    assert root.find(f"{F}valueQuantity/{F}value").get("value") == "1.50"
    assert root.find(f"{F}component/{F}valueQuantity/{F}value").get("value") == "0.1"


def test_div_without_namespace_is_put_in_xhtml() -> None:
    resource = {"resourceType": "Basic", "text": {"status": "generated", "div": "<div>hi</div>"}}
    div = parse_xml(resource_to_xml(resource)).find(f"{F}text/{{{XHTML_NS}}}div")
    assert div is not None and div.text == "hi"


def test_malformed_div_is_a_bad_request() -> None:
    resource = {"resourceType": "Basic", "text": {"status": "generated", "div": "<div><p></div>"}}
    with pytest.raises(BadRequest) as caught:
        resource_to_xml(resource)
    assert caught.value.issues[0].expression == ("Basic.text.div",)


def test_unknown_properties_are_kept_at_the_end() -> None:
    resource = {
        "resourceType": "Patient",
        "futureThing": {"flag": True, "label": "x"},
        "gender": "male",
    }
    root = parse_xml(resource_to_xml(resource))
    assert child_names(root) == ["gender", "futureThing"]
    future = root.find(F + "futureThing")
    assert [(c.tag, c.get("value")) for c in future] == [(F + "flag", "true"), (F + "label", "x")]


def test_unknown_resource_type_is_refused() -> None:
    with pytest.raises(BadRequest):
        resource_to_xml({"resourceType": "NotAResource"})


# --- XML -> JSON details ----------------------------------------------------------------------


def test_decimal_lexical_forms() -> None:
    body = "".join(
        f'<component><code><text value="{v}"/></code><valueQuantity><value value="{v}"/>'
        "</valueQuantity></component>"
        for v in ("3", "1.50", "-0.001", "1e2")
    )
    data = f'<Observation xmlns="{FHIR_NS}"><status value="final"/><code><text value="c"/>'
    data += f"</code>{body}</Observation>"
    values = [c["valueQuantity"]["value"] for c in xml_to_resource(data.encode())["component"]]
    assert values == [3, 1.5, -0.001, 100.0]
    assert isinstance(values[0], int) and isinstance(values[1], float)


def test_repeating_primitive_with_only_extensions_has_no_value_array() -> None:
    parsed = xml_to_resource(
        patient_xml(
            '<name><given><extension url="u"><valueString value="v"/></extension></given></name>'
        )
    )
    assert parsed["name"] == [{"_given": [{"extension": [{"url": "u", "valueString": "v"}]}]}]


def test_div_keeps_only_the_xhtml_namespace() -> None:
    data = (
        f'<Patient xmlns="{FHIR_NS}" xmlns:h="{XHTML_NS}" xmlns:o="urn:other">'
        '<text><status value="generated"/><h:div>a <h:b class="c">b</h:b></h:div></text></Patient>'
    )
    div = xml_to_resource(data.encode())["text"]["div"]
    assert div == f'<div xmlns="{XHTML_NS}">a <b class="c">b</b></div>'


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"<Patient xmlns='http://hl7.org/fhir'><id value='1'/>", "not well-formed"),
        (b"", "not well-formed"),
        (b"<Patient><id value='1'/></Patient>", "namespace"),
        (b"<Patient xmlns='urn:other'/>", "namespace"),
        (b"<Nonsense xmlns='http://hl7.org/fhir'/>", "Unknown resource type 'Nonsense'"),
        (b"<Resource xmlns='http://hl7.org/fhir'/>", "Unknown resource type 'Resource'"),
    ],
)
def test_document_level_errors(data: bytes, message: str) -> None:
    assert message in str(error_of(data))


@pytest.mark.parametrize(
    ("body", "expression", "message"),
    [
        ('<name><given value="a"/><foo value="b"/></name>', "Patient.name[0].foo", "Unknown"),
        ('<name><given value="a"><bar/></given></name>', "Patient.name[0].given[0].bar", "bar"),
        ('<name value="x"><family value="a"/></name>', "Patient.name[0]", "'value'"),
        ('<name><given value="a" other="b"/></name>', "Patient.name[0].given[0]", "'other'"),
        ('<active value="yes"/>', "Patient.active", "Invalid boolean"),
        ('<multipleBirthInteger value="1.5"/>', "Patient.multipleBirthInteger", "integer"),
        ('<gender value="male"/><gender value="female"/>', "Patient.gender", "only once"),
        ("<active/>", "Patient.active", "neither a value"),
        ("<name>text here</name>", "Patient.name[0]", "text content"),
        ('<name><family value="a"/></name><url value="u"/>', "Patient.url", "Unknown element"),
        ('<text><status value="generated"/><div>x</div></text>', "Patient.text.div", "namespace"),
        ("<contained><Patient/><Patient/></contained>", "Patient.contained[0]", "exactly one"),
        ("<contained><Foo/></contained>", "Patient.contained[0]", "'Foo'"),
    ],
)
def test_element_errors_point_at_the_element(body: str, expression: str, message: str) -> None:
    error = error_of(patient_xml(body), 422)
    assert error.issues[0].expression == (expression,)
    assert message in error.issues[0].diagnostics
    assert error.outcome()["issue"][0]["code"] == "structure"


def test_nested_resource_errors_carry_the_nested_path() -> None:
    data = (
        f'<Bundle xmlns="{FHIR_NS}"><type value="collection"/><entry><resource><Patient>'
        '<birthDate value="2000" foo="1"/></Patient></resource></entry></Bundle>'
    )
    error = error_of(data.encode(), 422)
    assert error.issues[0].expression == ("Bundle.entry[0].resource.birthDate",)


# --- hardening --------------------------------------------------------------------------------


def test_external_entity_is_not_resolved(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    data = (
        f'<?xml version="1.0"?><!DOCTYPE Patient [<!ENTITY x SYSTEM "file://{secret}">]>'
        f'<Patient xmlns="{FHIR_NS}"><name><family value="&x;"/></name><id value="a"/>&x;'
        "</Patient>"
    ).encode()
    error = error_of(data)
    assert "TOP-SECRET" not in str(error)


def test_entity_expansion_bomb_is_refused() -> None:
    entities = '<!ENTITY a0 "lol">' + "".join(
        f'<!ENTITY a{i} "{f"&a{i - 1};" * 10}">' for i in range(1, 10)
    )
    data = f'<!DOCTYPE Patient [{entities}]><Patient xmlns="{FHIR_NS}">&a9;</Patient>'
    error_of(data.encode())


def test_any_doctype_is_refused() -> None:
    data = f'<!DOCTYPE Patient><Patient xmlns="{FHIR_NS}"><id value="a"/></Patient>'
    assert "DOCTYPE" in str(error_of(data.encode()))
