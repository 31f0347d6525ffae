-- wrk script: GET a path drawn at random (uniformly) from a file of paths with their query
-- strings, one a line (e.g. /fhir/Observation?patient=...&code=...).
-- Usage: wrk ... -s search.lua http://HOST:PORT -- PATHS_FILE
-- done() (common.lua) prints one machine-readable line, "WRK_JSON {...}", that bench_search.py
-- parses.

local common = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "") .. "common.lua")

setup = common.setup
done = common.done

init, request = common.random_gets("", "paths")
