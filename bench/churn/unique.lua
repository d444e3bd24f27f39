-- wrk script: GET a URL no request asked for before (a cache-busting query string), so
-- every request is a MISS that stores a new tiny object. BENCH_DELAY_MS paces each
-- connection (connections x 1000 / delay = the most requests a second); BENCH_TAG keeps
-- two runs' URLs apart. Prints bench/report.lua's JSON line at the end.
local tag = os.getenv("BENCH_TAG") or "0"
local pause = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
local counter = 0

request = function()
  counter = counter + 1
  -- A fixed width keeps every object the same size all run long: when the counter went
  -- from 6 to 7 digits, cache-varnish (MALLOC_ARENA_MAX=2) stepped up 25 MiB after 3.5
  -- flat turnovers, then was flat again (objects 1 byte larger; not a steady stream).
  return wrk.format("GET", string.format("/static/churn?%s-%010d", tag, counter))
end

if pause > 0 then
  delay = function()
    return pause
  end
end

dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "../report.lua")
