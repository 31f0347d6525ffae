"""The generated element definitions and their query API."""

from __future__ import annotations

import pytest
from fhir.resources.R4B import get_fhir_model_class

from fhir_server import definitions
from fhir_server.definitions import (
    MODELLED_RESOURCE_TYPES,
    R4_RESOURCE_TYPES,
    Kind,
    mandatory_elements,
    summary_elements,
    type_definition,
)
from fhir_server.definitions.generate import DEFAULT_SOURCE, build, serialize

SOURCE_AVAILABLE = (DEFAULT_SOURCE / "profiles-resources.json").is_file()


def test_resource_types_are_the_concrete_r4_resources() -> None:
    assert len(R4_RESOURCE_TYPES) == 147
    assert {"Patient", "Observation", "Bundle", "Parameters", "Binary"} <= R4_RESOURCE_TYPES
    # abstract bases and logical models are not resource types one can store
    assert not {"Resource", "DomainResource", "MetadataResource"} & R4_RESOURCE_TYPES
    # R4B-only resources do not belong to R4
    assert "SubscriptionTopic" not in R4_RESOURCE_TYPES


def test_modelled_types_are_exactly_those_fhir_resources_can_build() -> None:
    assert MODELLED_RESOURCE_TYPES < R4_RESOURCE_TYPES
    for name in sorted(R4_RESOURCE_TYPES):
        try:
            get_fhir_model_class(name)
            buildable = True
        except ValueError:
            buildable = False
        assert (name in MODELLED_RESOURCE_TYPES) == buildable, name


def test_unknown_module_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError):
        _ = definitions.NO_SUCH_NAME


def test_patient_summary_expands_choices_and_includes_resource_basics() -> None:
    summary = summary_elements("Patient")
    expected = {"id", "meta", "implicitRules", "identifier", "active", "name", "gender"}
    assert expected | {"deceasedBoolean", "deceasedDateTime"} <= summary
    assert not {"text", "contained", "contact", "photo", "deceased", "deceased[x]"} & summary


def test_mandatory_elements() -> None:
    assert mandatory_elements("Observation") == {"status", "code"}
    assert mandatory_elements("Patient") == frozenset()
    medication_request = mandatory_elements("MedicationRequest")
    assert {"status", "intent", "subject"} <= medication_request
    assert {"medicationCodeableConcept", "medicationReference"} <= medication_request


def test_unknown_resource_type_raises_key_error() -> None:
    with pytest.raises(KeyError):
        summary_elements("NotAResource")


def test_properties_follow_definition_order() -> None:
    props = type_definition("Patient").properties
    names = ["id", "meta", "text", "contained", "extension", "identifier", "name", "link"]
    orders = [props[n].order for n in names]
    assert orders == sorted(orders)
    # the types of one choice element share its position
    assert props["deceasedBoolean"].order == props["deceasedDateTime"].order


def test_choice_properties_carry_their_type() -> None:
    props = type_definition("Observation").properties
    assert (props["valueQuantity"].type, props["valueQuantity"].kind) == ("Quantity", Kind.COMPLEX)
    assert props["valueBoolean"].kind is Kind.BOOLEAN
    assert props["valueInteger"].kind is Kind.INTEGER
    assert props["valueString"].element == "value[x]"
    assert "value" not in props


def test_primitive_kinds() -> None:
    assert type_definition("Quantity").properties["value"].kind is Kind.DECIMAL
    assert type_definition("ContactPoint").properties["rank"].kind is Kind.INTEGER
    assert type_definition("Attachment").properties["size"].kind is Kind.INTEGER
    assert type_definition("Narrative").properties["div"].kind is Kind.XHTML
    assert type_definition("Patient").properties["birthDate"].kind is Kind.STRING


def test_arrays_and_xml_attributes() -> None:
    name = type_definition("HumanName").properties
    assert name["given"].array and not name["family"].array
    assert name["id"].xml_attr and not type_definition("Patient").properties["id"].xml_attr
    assert type_definition("Extension").properties["url"].xml_attr
    assert type_definition("Patient.contact").properties["id"].xml_attr


def test_backbone_and_content_reference_types() -> None:
    questionnaire_item = type_definition("Questionnaire").properties["item"]
    assert questionnaire_item.type == "Questionnaire.item"
    assert type_definition("Questionnaire.item").properties["item"].type == "Questionnaire.item"
    assert type_definition("Bundle.entry").properties["link"].type == "Bundle.link"
    assert type_definition("Timing").properties["repeat"].type == "Timing.repeat"


def test_resource_typed_elements() -> None:
    assert type_definition("Bundle.entry").properties["resource"].kind is Kind.RESOURCE
    outcome = type_definition("Bundle.entry.response").properties["outcome"]
    assert outcome.kind is Kind.RESOURCE
    contained = type_definition("Patient").properties["contained"]
    assert contained.kind is Kind.RESOURCE and contained.array
    assert type_definition("Parameters.parameter").properties["resource"].kind is Kind.RESOURCE


def test_every_reachable_type_has_a_definition() -> None:
    pending, seen = list(R4_RESOURCE_TYPES), set()
    while pending:
        name = pending.pop()
        seen.add(name)
        for prop in type_definition(name).properties.values():
            if prop.kind is Kind.COMPLEX and prop.type not in seen:
                pending.append(prop.type)
    assert {"HumanName", "Extension", "Questionnaire.item", "ElementDefinition"} <= seen


@pytest.mark.skipif(not SOURCE_AVAILABLE, reason="FHIR definitions not available")
def test_committed_data_is_what_the_generator_produces() -> None:
    assert serialize(build(DEFAULT_SOURCE)) == definitions.DATA_FILE.read_bytes()
