-- wrk script: GET a path drawn at random (uniformly) from a file of paths with their query
-- strings, one a line (e.g. /fhir/Observation?patient=...&code=...).
-- Usage: wrk ... -s search.lua http://HOST:PORT -- PATHS_FILE
-- done() prints one machine-readable line, "WRK_JSON {...}", that bench_search.py parses.

local counter = 0

function setup(thread)
   counter = counter + 1
   thread:set("seed", counter)
end

local paths = {}

function init(args)
   for line in io.lines(args[1]) do
      if #line > 0 then
         paths[#paths + 1] = line
      end
   end
   assert(#paths > 0, "no paths in " .. args[1])
   math.randomseed(os.time() * 1000 + (seed or 0))
   wrk.headers["Accept"] = "application/fhir+json"
end

function request()
   return wrk.format("GET", paths[math.random(#paths)])
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
