-- wrk script: GET PREFIX/<id> for an id drawn at random (uniformly) from a file of ids, one a line.
-- Usage: wrk ... -s get.lua http://HOST:PORT -- IDS_FILE /fhir/Patient/
-- done() (common.lua) prints one machine-readable line, "WRK_JSON {...}", that bench_crud.py
-- parses.

local common = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "") .. "common.lua")

setup = common.setup
done = common.done

init, request = common.random_gets("/fhir/Patient/", "ids")
