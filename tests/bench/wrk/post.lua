-- wrk script: POST the same FHIR resource body over and over (the server assigns a new id each
-- time). Usage: wrk ... -s post.lua http://HOST:PORT/fhir/Patient -- BODY_FILE
-- done() prints one machine-readable line, "WRK_JSON {...}", that bench_crud.py parses.

function init(args)
   local file = assert(io.open(args[1], "rb"))
   wrk.method = "POST"
   wrk.body = file:read("*a")
   file:close()
   wrk.headers["Content-Type"] = "application/fhir+json"
   wrk.headers["Accept"] = "application/fhir+json"
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect_errors": %d, ' ..
      '"read_errors": %d, "write_errors": %d, "timeouts": %d, "status_errors": %d, ' ..
      '"mean_us": %.1f, "max_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d}\n',
      summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.timeout,
      e.status, latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
      latency:percentile(99)))
end
