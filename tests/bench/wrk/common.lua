-- Shared by the wrk scripts here (get.lua, post.lua, search.lua), each of which loads it from
-- its own folder:
--   local common = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "") .. "common.lua")
-- common.done prints one machine-readable line, "WRK_JSON {...}", that tests/bench/common.py
-- (run_wrk) parses.

local common = {}

local counter = 0

-- setup(thread): give each thread its own `seed` global (see seed_random).
function common.setup(thread)
   counter = counter + 1
   thread:set("seed", counter)
end

-- The non-empty lines of `file`, each after `prefix`; fails when there are none.
function common.read_paths(file, prefix, what)
   local paths = {}
   for line in io.lines(file) do
      if #line > 0 then
         paths[#paths + 1] = prefix .. line
      end
   end
   assert(#paths > 0, "no " .. what .. " in " .. file)
   return paths
end

-- Seed math.random differently in each thread (the `seed` global set by common.setup).
function common.seed_random()
   math.randomseed(os.time() * 1000 + (seed or 0))
end

-- init(args) and request() of a script that GETs paths drawn at random (uniformly) from the
-- file args[1], one a line, each after the prefix args[2] (default: `default_prefix`).
function common.random_gets(default_prefix, what)
   local paths = {}
   local function init(args)
      paths = common.read_paths(args[1], args[2] or default_prefix, what)
      common.seed_random()
      wrk.headers["Accept"] = "application/fhir+json"
   end
   local function request()
      return wrk.format("GET", paths[math.random(#paths)])
   end
   return init, request
end

function common.done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect_errors": %d, ' ..
      '"read_errors": %d, "write_errors": %d, "timeouts": %d, "status_errors": %d, ' ..
      '"mean_us": %.1f, "max_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d}\n',
      summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.timeout,
      e.status, latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
      latency:percentile(99)))
end

return common
