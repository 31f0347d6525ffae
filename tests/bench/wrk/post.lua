-- wrk script: POST the same FHIR resource body over and over (the server assigns a new id each
-- time). Usage: wrk ... -s post.lua http://HOST:PORT/fhir/Patient -- BODY_FILE
-- done() (common.lua) prints one machine-readable line, "WRK_JSON {...}", that bench_crud.py
-- parses.

local common = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "") .. "common.lua")

done = common.done

function init(args)
   local file = assert(io.open(args[1], "rb"))
   wrk.method = "POST"
   wrk.body = file:read("*a")
   file:close()
   wrk.headers["Content-Type"] = "application/fhir+json"
   wrk.headers["Accept"] = "application/fhir+json"
end
