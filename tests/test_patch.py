"""JSON Patch and FHIRPath Patch, without HTTP."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from fhir_server.errors import BadRequest, FhirError, Unprocessable
from fhir_server.patch import apply_fhirpath_patch, apply_json_patch

SPEC_CASES = json.loads(
    (Path(__file__).parent / "fixtures" / "patch" / "fhirpath-patch-spec-cases.json").read_text()
)


def operation(kind: str, path: str, **parts: Any) -> dict[str, Any]:
    """An `operation` parameter; `value` is a dict of the value part's members (valueX or part)."""
    built: list[dict[str, Any]] = [
        {"name": "type", "valueCode": kind},
        {"name": "path", "valueString": path},
    ]
    if "name" in parts:
        built.append({"name": "name", "valueString": parts["name"]})
    for key in ("index", "source", "destination"):
        if key in parts:
            built.append({"name": key, "valueInteger": parts[key]})
    if "value" in parts:
        built.append({"name": "value", **parts["value"]})
    return {"name": "operation", "part": built}


def parameters(*operations: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(operations)}


def patient() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": "p1",
        "birthDate": "1970-01-01",
        "_birthDate": {"extension": [{"url": "http://x/birthTime", "valueDateTime": "1970"}]},
        "name": [
            {
                "use": "usual",
                "given": ["Jim", "Bob"],
                "_given": [None, {"extension": [{"url": "http://x/g", "valueString": "e"}]}],
            },
            {"use": "official", "family": "Chalmers", "given": ["Peter"]},
        ],
        "identifier": [
            {"system": "http://a", "value": "1"},
            {"system": "http://b", "value": "2"},
        ],
        "telecom": [
            {"system": "phone", "value": "555"},
            {"system": "email", "value": "a@b.c"},
        ],
        "extension": [{"url": "http://x", "valueString": "ext"}],
        "contact": [{"name": {"text": "Mum", "given": ["Jane"]}, "gender": "female"}],
    }


def observation() -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "bp"},
        "valueQuantity": {"value": 1, "unit": "mg"},
        "component": [
            {"code": {"text": "sys"}, "valueQuantity": {"value": 120, "unit": "mm[Hg]"}},
            {"code": {"text": "note"}, "valueString": "fine"},
        ],
    }


def fhirpath_patch(resource: dict[str, Any], *operations: dict[str, Any]) -> dict[str, Any]:
    """Apply, and check on the way that the input was left alone."""
    before = copy.deepcopy(resource)
    result = apply_fhirpath_patch(resource, parameters(*operations))
    assert resource == before
    return result


def fhirpath_error(resource: dict[str, Any], patch: dict[str, Any]) -> FhirError:
    before = copy.deepcopy(resource)
    with pytest.raises(FhirError) as caught:
        apply_fhirpath_patch(resource, patch)
    assert resource == before
    return caught.value


def only_issue(error: FhirError) -> dict[str, Any]:
    issues = error.outcome()["issue"]
    assert len(issues) == 1
    return issues[0]


# ---------------------------------------------------------------------------------------------
# Published FHIRPath Patch test cases


@pytest.mark.parametrize("case", SPEC_CASES["cases"], ids=lambda case: case["name"])
def test_published_fhirpath_patch_cases(case: dict[str, Any]) -> None:
    if case["output"] is None:
        error = fhirpath_error(case["input"], case["patch"])
        assert error.status == 422
        assert "matched 0" in only_issue(error)["diagnostics"]
    else:
        before = copy.deepcopy(case["input"])
        assert apply_fhirpath_patch(case["input"], case["patch"]) == case["output"]
        assert case["input"] == before


# ---------------------------------------------------------------------------------------------
# add


def test_add_single_primitive_sets_it() -> None:
    result = fhirpath_patch(
        patient(), operation("add", "Patient", name="gender", value={"valueCode": "male"})
    )
    assert result["gender"] == "male"


def test_add_existing_single_element_is_refused() -> None:
    patch = parameters(
        operation("add", "Patient", name="birthDate", value={"valueDate": "2000-01-01"})
    )
    error = fhirpath_error(patient(), patch)
    assert error.status == 422
    issue = only_issue(error)
    assert "already has a value" in issue["diagnostics"]
    assert issue["expression"] == ["Parameters.parameter[0].part[2]"]  # the name part


def test_add_appends_to_a_primitive_list_selected_with_where() -> None:
    result = fhirpath_patch(
        patient(),
        operation(
            "add", "Patient.name.where(use='official')", name="given", value={"valueString": "J"}
        ),
    )
    assert result["name"][1]["given"] == ["Peter", "J"]
    assert result["name"][0] == patient()["name"][0]


def test_add_creates_a_list_for_a_repeating_element() -> None:
    result = fhirpath_patch(
        patient(),
        operation(
            "add",
            "Patient.name.where(use='official')",
            name="prefix",
            value={"valueString": "Mr"},
        ),
    )
    assert result["name"][1]["prefix"] == ["Mr"]


def test_add_complex_value_from_nested_parts() -> None:
    identifier = {
        "part": [
            {"name": "system", "valueUri": "http://c"},
            {"name": "value", "valueString": "3"},
            {"name": "period", "valuePeriod": {"start": "2020"}},
        ]
    }
    result = fhirpath_patch(
        patient(), operation("add", "Patient", name="identifier", value=identifier)
    )
    assert result["identifier"][-1] == {
        "system": "http://c",
        "value": "3",
        "period": {"start": "2020"},
    }
    assert len(result["identifier"]) == 3


def test_add_human_name_from_parts_makes_lists_of_repeating_members() -> None:
    name = {
        "part": [
            {"name": "family", "valueString": "Doe"},
            {"name": "given", "valueString": "Ann"},
            {"name": "given", "valueString": "Lee"},
            {"name": "prefix", "valueString": "Dr"},
        ]
    }
    result = fhirpath_patch(patient(), operation("add", "Patient", name="name", value=name))
    assert result["name"][2] == {"family": "Doe", "given": ["Ann", "Lee"], "prefix": ["Dr"]}


def test_add_backbone_element_with_nested_parts_two_levels_deep() -> None:
    contact = {
        "part": [
            {"name": "gender", "valueCode": "male"},
            {"name": "name", "part": [{"name": "family", "valueString": "Dad"}]},
        ]
    }
    result = fhirpath_patch(patient(), operation("add", "Patient", name="contact", value=contact))
    assert result["contact"][1] == {"gender": "male", "name": {"family": "Dad"}}


def test_add_choice_element_takes_its_type_from_the_value() -> None:
    result = fhirpath_patch(
        patient(), operation("add", "Patient", name="deceased", value={"valueBoolean": True})
    )
    assert result["deceasedBoolean"] is True
    assert "deceased" not in result


def test_add_choice_element_refused_when_another_type_is_present() -> None:
    resource = {**patient(), "deceasedBoolean": False}
    patch = parameters(
        operation("add", "Patient", name="deceased", value={"valueDateTime": "2020-01-01"})
    )
    error = fhirpath_error(resource, patch)
    assert error.status == 422
    assert "already has a value" in only_issue(error)["diagnostics"]


def test_add_choice_in_nested_parts() -> None:
    component = {
        "part": [
            {"name": "code", "valueCodeableConcept": {"text": "dia"}},
            {"name": "value", "valueQuantity": {"value": 80}},
        ]
    }
    result = fhirpath_patch(
        observation(), operation("add", "Observation", name="component", value=component)
    )
    assert result["component"][2] == {"code": {"text": "dia"}, "valueQuantity": {"value": 80}}


def test_add_extension_to_an_element_selected_by_where() -> None:
    extension = {"valueExtension": {"url": "http://y", "valueCode": "z"}}
    result = fhirpath_patch(
        patient(),
        operation(
            "add", "Patient.telecom.where(system='email')", name="extension", value=extension
        ),
    )
    assert result["telecom"][1]["extension"] == [{"url": "http://y", "valueCode": "z"}]


def test_add_extension_to_a_primitive_goes_into_its_companion() -> None:
    extension = {"valueExtension": {"url": "http://x/note", "valueString": "n"}}
    result = fhirpath_patch(
        patient(), operation("add", "Patient.contact[0].gender", name="extension", value=extension)
    )
    assert result["contact"][0]["gender"] == "female"
    assert result["contact"][0]["_gender"] == {
        "extension": [{"url": "http://x/note", "valueString": "n"}]
    }


def test_add_to_a_primitive_list_item_keeps_companions_parallel() -> None:
    extension = {"valueExtension": {"url": "http://x/n", "valueString": "n"}}
    result = fhirpath_patch(
        patient(), operation("add", "Patient.name[1].given[0]", name="extension", value=extension)
    )
    assert result["name"][1]["_given"] == [
        {"extension": [{"url": "http://x/n", "valueString": "n"}]}
    ]


def test_add_contained_resource_from_a_resource_part() -> None:
    organization = {"resourceType": "Organization", "id": "o1", "name": "Acme"}
    result = fhirpath_patch(
        patient(), operation("add", "Patient", name="contained", value={"resource": organization})
    )
    assert result["contained"] == [organization]


def test_add_unknown_element_is_refused() -> None:
    patch = parameters(operation("add", "Patient", name="colour", value={"valueString": "x"}))
    error = fhirpath_error(patient(), patch)
    assert error.status == 422
    issue = only_issue(error)
    assert "Patient has no element 'colour'" in issue["diagnostics"]
    assert issue["expression"] == ["Parameters.parameter[0].part[2]"]  # the name part


def test_add_wrong_kind_of_value_is_refused() -> None:
    patch = parameters(
        operation("add", "Patient", name="maritalStatus", value={"valueString": "x"})
    )
    error = fhirpath_error(patient(), patch)
    assert error.status == 422
    assert "'maritalStatus' takes a complex datatype" in only_issue(error)["diagnostics"]


def test_add_non_extension_member_to_a_primitive_is_refused() -> None:
    patch = parameters(
        operation("add", "Patient.birthDate", name="foo", value={"valueString": "x"})
    )
    error = fhirpath_error(patient(), patch)
    assert error.status == 422
    assert "primitive" in only_issue(error)["diagnostics"]


# ---------------------------------------------------------------------------------------------
# insert


def test_insert_into_a_primitive_list_shifts_companions() -> None:
    result = fhirpath_patch(
        patient(),
        operation("insert", "Patient.name[0].given", index=1, value={"valueString": "Zed"}),
    )
    assert result["name"][0]["given"] == ["Jim", "Zed", "Bob"]
    assert result["name"][0]["_given"] == [None, None, patient()["name"][0]["_given"][1]]


def test_insert_with_a_companion_extension_on_the_value() -> None:
    value = {
        "valueString": "Zed",
        "_valueString": {"extension": [{"url": "http://x/z", "valueCode": "z"}]},
    }
    result = fhirpath_patch(
        patient(), operation("insert", "Patient.name[1].given", index=0, value=value)
    )
    assert result["name"][1]["given"] == ["Zed", "Peter"]
    assert result["name"][1]["_given"] == [value["_valueString"], None]


def test_insert_into_an_absent_list_creates_it() -> None:
    result = fhirpath_patch(
        patient(),
        operation("insert", "Patient.address", index=0, value={"valueAddress": {"city": "X"}}),
    )
    assert result["address"] == [{"city": "X"}]


def test_insert_index_past_the_end_is_unprocessable() -> None:
    patch = parameters(
        operation(
            "insert", "Patient.identifier", index=3, value={"valueIdentifier": {"value": "x"}}
        )
    )
    error = fhirpath_error(patient(), patch)
    assert error.status == 422
    issue = only_issue(error)
    assert "index 3 is out of range for a list of 2" in issue["diagnostics"]
    assert issue["expression"] == ["Parameters.parameter[0].part[2]"]  # the index part


def test_insert_into_a_single_valued_element_is_refused() -> None:
    patch = parameters(
        operation("insert", "Patient.birthDate", index=0, value={"valueDate": "2000-01-01"})
    )
    error = fhirpath_error(patient(), patch)
    assert error.status == 422
    assert "repeating element" in only_issue(error)["diagnostics"]


def test_insert_into_absent_single_valued_element_is_refused() -> None:
    patch = parameters(operation("insert", "Patient.gender", index=0, value={"valueCode": "male"}))
    error = fhirpath_error(patient(), patch)
    assert error.status == 422
    assert "'gender' is not a repeating element" in only_issue(error)["diagnostics"]


# ---------------------------------------------------------------------------------------------
# move


def test_move_within_a_primitive_list_moves_companions() -> None:
    result = fhirpath_patch(
        patient(), operation("move", "Patient.name[0].given", source=1, destination=0)
    )
    assert result["name"][0]["given"] == ["Bob", "Jim"]
    assert result["name"][0]["_given"] == [patient()["name"][0]["_given"][1], None]


def test_move_source_out_of_range_names_the_source_part() -> None:
    patch = parameters(operation("move", "Patient.telecom", source=2, destination=0))
    error = fhirpath_error(patient(), patch)
    assert error.status == 422
    issue = only_issue(error)
    assert "source 2 is out of range for a list of 2" in issue["diagnostics"]
    assert issue["expression"] == ["Parameters.parameter[0].part[2]"]


def test_move_destination_out_of_range() -> None:
    patch = parameters(operation("move", "Patient.telecom", source=0, destination=5))
    error = fhirpath_error(patient(), patch)
    assert only_issue(error)["expression"] == ["Parameters.parameter[0].part[3]"]


def test_move_needs_items_of_a_single_list() -> None:
    patch = parameters(operation("move", "Patient.name.given", source=0, destination=1))
    error = fhirpath_error(patient(), patch)
    assert error.status == 422
    assert "one repeating element" in only_issue(error)["diagnostics"]


# ---------------------------------------------------------------------------------------------
# replace


def test_replace_primitive_replaces_the_whole_element_including_extensions() -> None:
    result = fhirpath_patch(
        patient(), operation("replace", "Patient.birthDate", value={"valueDate": "1980-02-02"})
    )
    assert result["birthDate"] == "1980-02-02"
    assert "_birthDate" not in result


def test_replace_list_item_selected_by_index() -> None:
    result = fhirpath_patch(
        patient(),
        operation("replace", "Patient.telecom[1]", value={"valueContactPoint": {"value": "x"}}),
    )
    assert result["telecom"] == [{"system": "phone", "value": "555"}, {"value": "x"}]


def test_replace_value_inside_an_element_selected_by_where() -> None:
    result = fhirpath_patch(
        patient(),
        operation(
            "replace",
            "Patient.identifier.where(system='http://b').value",
            value={"valueString": "9"},
        ),
    )
    assert [i["value"] for i in result["identifier"]] == ["1", "9"]


def test_replace_extension_selected_by_url() -> None:
    result = fhirpath_patch(
        patient(),
        operation(
            "replace",
            "Patient.extension.where(url='http://x')",
            value={"valueExtension": {"url": "http://x", "valueString": "new"}},
        ),
    )
    assert result["extension"] == [{"url": "http://x", "valueString": "new"}]


def test_replace_choice_value_reached_by_its_typed_name() -> None:
    result = fhirpath_patch(
        observation(),
        operation(
            "replace",
            "Observation.component[0].valueQuantity",
            value={"valueQuantity": {"value": 130, "unit": "mm[Hg]"}},
        ),
    )
    assert result["component"][0]["valueQuantity"] == {"value": 130, "unit": "mm[Hg]"}


def test_replace_choice_with_another_type_renames_the_member() -> None:
    result = fhirpath_patch(
        observation(), operation("replace", "Observation.value", value={"valueString": "high"})
    )
    assert result["valueString"] == "high"
    assert "valueQuantity" not in result


def test_replace_primitive_choice_reached_by_fhirpath_name() -> None:
    result = fhirpath_patch(
        observation(),
        operation("replace", "Observation.component[1].value", value={"valueString": "bad"}),
    )
    assert result["component"][1]["valueString"] == "bad"


def test_replace_nested_element_in_backbone() -> None:
    result = fhirpath_patch(
        patient(),
        operation("replace", "Patient.contact[0].name", value={"valueHumanName": {"text": "Ma"}}),
    )
    assert result["contact"][0] == {"name": {"text": "Ma"}, "gender": "female"}


def test_replace_one_primitive_of_a_list() -> None:
    result = fhirpath_patch(
        patient(),
        operation("replace", "Patient.name[0].given[1]", value={"valueString": "Robert"}),
    )
    assert result["name"][0]["given"] == ["Jim", "Robert"]
    assert "_given" not in result["name"][0]  # the replaced item took its extension with it


def test_replace_of_a_path_matching_several_elements_is_unprocessable() -> None:
    patch = parameters(operation("replace", "Patient.name.given", value={"valueString": "x"}))
    error = fhirpath_error(patient(), patch)
    assert error.status == 422
    issue = only_issue(error)
    assert issue["diagnostics"] == (
        "FHIRPath Patch operation 0 (replace at 'Patient.name.given'): "
        "the path must match exactly one element but matched 3"
    )
    assert issue["expression"] == ["Parameters.parameter[0].part[1]"]


def test_replace_of_a_path_matching_nothing_names_the_failing_operation() -> None:
    patch = parameters(
        operation("delete", "Patient.gender"),
        operation("replace", "Patient.name[5].family", value={"valueString": "x"}),
    )
    error = fhirpath_error(patient(), patch)
    issue = only_issue(error)
    assert "operation 1 (replace at 'Patient.name[5].family')" in issue["diagnostics"]
    assert "matched 0" in issue["diagnostics"]
    assert issue["expression"] == ["Parameters.parameter[1].part[1]"]


def test_replace_the_resource_itself_is_refused() -> None:
    patch = parameters(operation("replace", "Patient", value={"valueString": "x"}))
    error = fhirpath_error(patient(), patch)
    assert "resource itself" in only_issue(error)["diagnostics"]


# ---------------------------------------------------------------------------------------------
# delete


def test_delete_primitive_takes_its_companion_along() -> None:
    result = fhirpath_patch(patient(), operation("delete", "Patient.birthDate"))
    assert "birthDate" not in result
    assert "_birthDate" not in result


def test_delete_primitive_list_item_keeps_companions_parallel() -> None:
    result = fhirpath_patch(patient(), operation("delete", "Patient.name[0].given[0]"))
    assert result["name"][0]["given"] == ["Bob"]
    assert result["name"][0]["_given"] == [patient()["name"][0]["_given"][1]]


def test_delete_the_extended_item_drops_an_all_null_companion() -> None:
    result = fhirpath_patch(patient(), operation("delete", "Patient.name[0].given[1]"))
    assert result["name"][0] == {"use": "usual", "given": ["Jim"]}


def test_delete_extension_of_a_primitive_drops_the_empty_companion() -> None:
    result = fhirpath_patch(patient(), operation("delete", "Patient.birthDate.extension"))
    assert result["birthDate"] == "1970-01-01"
    assert "_birthDate" not in result


def test_delete_only_extension_of_a_null_list_item_removes_the_item() -> None:
    extension = {"extension": [{"url": "http://x/u", "valueString": "x"}]}
    resource = {
        "resourceType": "Patient",
        "name": [{"family": "F", "given": [None, "b"], "_given": [extension, None]}],
    }
    result = fhirpath_patch(resource, operation("delete", "Patient.name[0].given.extension"))
    assert result["name"] == [{"family": "F", "given": ["b"]}]


def test_delete_value_of_item_keeps_null_placeholder_for_remaining_companion() -> None:
    extension = {"extension": [{"url": "http://x/u", "valueString": "x"}]}
    resource = {
        "resourceType": "Patient",
        "name": [{"given": [None, "b"], "_given": [extension, None]}],
    }
    result = fhirpath_patch(resource, operation("delete", "Patient.name[0].given[1]"))
    assert result["name"] == [{"given": [None], "_given": [extension]}]


def test_delete_of_last_item_removes_the_list() -> None:
    result = fhirpath_patch(
        patient(), operation("delete", "Patient.extension.where(url='http://x')")
    )
    assert "extension" not in result


def test_delete_prunes_containers_left_empty_up_the_tree() -> None:
    resource = {"resourceType": "Patient", "contact": [{"name": {"given": ["A"]}}]}
    result = fhirpath_patch(resource, operation("delete", "Patient.contact[0].name.given"))
    assert result == {"resourceType": "Patient"}


def test_delete_leaves_non_empty_ancestors() -> None:
    result = fhirpath_patch(patient(), operation("delete", "Patient.contact[0].name.given[0]"))
    assert result["contact"] == [{"name": {"text": "Mum"}, "gender": "female"}]


def test_delete_of_a_missing_element_is_a_no_op() -> None:
    assert fhirpath_patch(patient(), operation("delete", "Patient.gender")) == patient()


def test_delete_of_several_elements_is_unprocessable() -> None:
    error = fhirpath_error(patient(), parameters(operation("delete", "Patient.telecom")))
    assert error.status == 422
    assert "matched 2" in only_issue(error)["diagnostics"]


def test_delete_the_resource_itself_is_refused() -> None:
    error = fhirpath_error(patient(), parameters(operation("delete", "Patient")))
    assert error.status == 422


def test_delete_quantity_in_component() -> None:
    result = fhirpath_patch(
        observation(), operation("delete", "Observation.component[0].valueQuantity")
    )
    assert result["component"][0] == {"code": {"text": "sys"}}


# ---------------------------------------------------------------------------------------------
# Sequences and paths


def test_operations_apply_in_order_and_see_earlier_results() -> None:
    result = fhirpath_patch(
        patient(),
        operation("add", "Patient", name="gender", value={"valueCode": "other"}),
        operation("replace", "Patient.gender", value={"valueCode": "male"}),
        operation(
            "insert", "Patient.telecom", index=0, value={"valueContactPoint": {"value": "0"}}
        ),
        operation("delete", "Patient.telecom[2]"),
    )
    assert result["gender"] == "male"
    assert [t["value"] for t in result["telecom"]] == ["0", "555"]


def test_resource_variable_is_available() -> None:
    result = fhirpath_patch(
        patient(), operation("replace", "%resource.name[1].family", value={"valueString": "X"})
    )
    assert result["name"][1]["family"] == "X"


def test_path_to_a_computed_value_is_refused() -> None:
    patch = parameters(operation("replace", "Patient.name.count()", value={"valueInteger": 1}))
    error = fhirpath_error(patient(), patch)
    assert error.status == 422
    assert "computed value" in only_issue(error)["diagnostics"]


def test_unknown_function_is_unprocessable() -> None:
    error = fhirpath_error(patient(), parameters(operation("delete", "Patient.name.frobnicate()")))
    assert error.status == 422
    assert "evaluation failed" in only_issue(error)["diagnostics"]


# ---------------------------------------------------------------------------------------------
# Malformed Parameters: 400


@pytest.mark.parametrize(
    ("patch", "expression", "fragment"),
    [
        ({"resourceType": "Patient"}, "Parameters", "must be a Parameters resource"),
        (
            {"resourceType": "Parameters", "parameter": [{"name": "op", "part": []}]},
            "Parameters.parameter[0].name",
            "named 'operation'",
        ),
        (
            {"resourceType": "Parameters", "parameter": [{"name": "operation"}]},
            "Parameters.parameter[0]",
            "has no parts",
        ),
        (
            parameters({"name": "operation", "part": [{"name": "path", "valueString": "Patient"}]}),
            "Parameters.parameter[0]",
            "missing the 'type' part",
        ),
        (
            parameters(operation("upsert", "Patient")),
            "Parameters.parameter[0].part[0]",
            "unknown operation type 'upsert'",
        ),
        (
            parameters({"name": "operation", "part": [{"name": "type", "valueCode": "delete"}]}),
            "Parameters.parameter[0]",
            "missing the 'path' part",
        ),
        (
            parameters(operation("insert", "Patient.name", value={"valueString": "x"})),
            "Parameters.parameter[0]",
            "needs a 'index' part",
        ),
        (
            parameters(operation("insert", "Patient.name", index=-1, value={"valueString": "x"})),
            "Parameters.parameter[0].part[2]",
            "valueInteger of 0 or more",
        ),
        (
            parameters(operation("delete", "Patient.name", value={"valueString": "x"})),
            "Parameters.parameter[0].part[2]",
            "not used by a 'delete'",
        ),
        (
            parameters(operation("delete", "Patient.name[")),
            "Parameters.parameter[0].part[1]",
            "invalid FHIRPath",
        ),
        (
            parameters(operation("replace", "Patient.gender", value={})),
            "Parameters.parameter[0].part[2]",
            "needs a value[x] or nested parts",
        ),
        (
            parameters(
                operation("replace", "Patient.gender", value={"valueCode": "a", "valueString": "b"})
            ),
            "Parameters.parameter[0].part[2]",
            "exactly one value",
        ),
        (
            parameters(
                operation("add", "Patient", name="name", value={"part": [{"valueString": "x"}]})
            ),
            "Parameters.parameter[0].part[3].part[0]",
            "needs a name",
        ),
    ],
)
def test_malformed_parameters_are_bad_requests(
    patch: dict[str, Any], expression: str, fragment: str
) -> None:
    error = fhirpath_error(patient(), patch)
    assert isinstance(error, BadRequest)
    assert error.status == 400
    issue = only_issue(error)
    assert issue["expression"] == [expression]
    assert fragment in issue["diagnostics"]


def test_duplicate_part_is_a_bad_request() -> None:
    op = operation("delete", "Patient.gender")
    op["part"].append({"name": "path", "valueString": "Patient.name"})
    error = fhirpath_error(patient(), parameters(op))
    assert error.status == 400
    assert only_issue(error)["expression"] == ["Parameters.parameter[0].part[2]"]


def test_malformed_later_operation_rejects_the_whole_patch_before_applying() -> None:
    patch = parameters(operation("delete", "Patient.gender"), operation("move", "Patient.name"))
    error = fhirpath_error(patient(), patch)
    assert error.status == 400
    assert "Parameters.parameter[1]" in only_issue(error)["diagnostics"]


def test_empty_parameters_change_nothing_but_still_copy() -> None:
    resource = patient()
    result = apply_fhirpath_patch(resource, {"resourceType": "Parameters"})
    assert result == resource
    assert result is not resource
    result["name"][0]["given"].append("x")
    assert resource["name"][0]["given"] == ["Jim", "Bob"]


# ---------------------------------------------------------------------------------------------
# JSON Patch


def json_patch(resource: dict[str, Any], patch: object) -> dict[str, Any]:
    before = copy.deepcopy(resource)
    result = apply_json_patch(resource, patch)
    assert resource == before
    return result


def json_patch_error(resource: dict[str, Any], patch: object) -> FhirError:
    before = copy.deepcopy(resource)
    with pytest.raises(FhirError) as caught:
        apply_json_patch(resource, patch)
    assert resource == before
    return caught.value


def test_json_patch_applies_every_operation_kind() -> None:
    result = json_patch(
        patient(),
        [
            {"op": "test", "path": "/birthDate", "value": "1970-01-01"},
            {"op": "replace", "path": "/birthDate", "value": "1971-01-01"},
            {"op": "add", "path": "/telecom/-", "value": {"system": "fax", "value": "9"}},
            {"op": "remove", "path": "/telecom/0"},
            {"op": "copy", "from": "/name/1/family", "path": "/name/0/family"},
            {"op": "move", "from": "/identifier/1", "path": "/identifier/0"},
        ],
    )
    assert result["birthDate"] == "1971-01-01"
    assert [t["value"] for t in result["telecom"]] == ["a@b.c", "9"]
    assert result["name"][0]["family"] == "Chalmers"
    assert [i["value"] for i in result["identifier"]] == ["2", "1"]


def test_json_patch_result_does_not_share_objects_with_input() -> None:
    resource = patient()
    result = json_patch(resource, [])
    result["contact"][0]["name"]["given"].append("x")
    assert resource["contact"][0]["name"]["given"] == ["Jane"]


@pytest.mark.parametrize(
    ("patch", "expression", "fragment"),
    [
        ({"op": "add"}, "Patch", "JSON array"),
        ([["add"]], "Patch[0]", "must be a JSON object"),
        ([{"op": "upsert", "path": "/x"}], "Patch[0].op", "must be one of"),
        ([{"op": "add", "path": "/x"}], "Patch[0].value", "needs a 'value'"),
        ([{"op": "move", "path": "/x"}], "Patch[0].from", "needs a 'from'"),
        ([{"op": "remove", "path": "name"}], "Patch[0].path", "JSON Pointer"),
        ([{"op": "remove", "path": 3}], "Patch[0].path", "JSON Pointer"),
    ],
)
def test_malformed_json_patch_is_a_bad_request(
    patch: object, expression: str, fragment: str
) -> None:
    error = json_patch_error(patient(), patch)
    assert error.status == 400
    issue = only_issue(error)
    assert issue["expression"] == [expression]
    assert fragment in issue["diagnostics"]


@pytest.mark.parametrize(
    ("operation_", "fragment"),
    [
        ({"op": "remove", "path": "/gender"}, "non-existent"),
        ({"op": "replace", "path": "/name/7/family", "value": "x"}, "out of bounds"),
        ({"op": "add", "path": "/name/9", "value": {}}, "outside of list"),
        ({"op": "test", "path": "/birthDate", "value": "2000"}, "test failed"),
        ({"op": "add", "path": "/birthDate/year", "value": 1}, "non-container"),
        ({"op": "move", "from": "/name", "path": "/name/0/x"}, "own children"),
    ],
)
def test_json_patch_operation_that_cannot_apply_is_unprocessable(
    operation_: dict[str, Any], fragment: str
) -> None:
    patch = [{"op": "test", "path": "/id", "value": "p1"}, operation_]
    error = json_patch_error(patient(), patch)
    assert isinstance(error, Unprocessable)
    assert error.status == 422
    issue = only_issue(error)
    assert issue["expression"] == ["Patch[1]"]
    assert issue["diagnostics"].startswith(f"JSON Patch operation 1 ({operation_['op']} ")
    assert fragment in issue["diagnostics"]


def test_json_patch_replacing_the_document_with_a_non_object_is_unprocessable() -> None:
    error = json_patch_error(patient(), [{"op": "replace", "path": "", "value": [1]}])
    assert error.status == 422
    assert "not a JSON object" in only_issue(error)["diagnostics"]
