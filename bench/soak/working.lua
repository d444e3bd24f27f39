-- wrk script: the soak's working set. GETs /static/ws-0000 .. /static/ws-<SOAK_WORKING_SET - 1>
-- in turn, paced (BENCH_DELAY_MS per connection), and counts every response: 200 HIT, 200 MISS
-- (X-Cache) or anything else. Once a second it writes the running totals ("ws " and a JSON
-- object, flushed: the soak reads the last at every sample); bench/report.lua's line at the end.
local size = tonumber(os.getenv("SOAK_WORKING_SET") or "300")
local pause = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
local counter = 0
local hits, misses, other, last = 0, 0, 0, 0

request = function()
  counter = counter + 1
  return wrk.format("GET", string.format("/static/ws-%04d", counter % size))
end

response = function(status, headers, body)
  -- HAProxy writes header names in lower case on HTTP/1.1; Varnish as the VCL set them.
  local cache = headers["X-Cache"] or headers["x-cache"]
  if status ~= 200 then
    other = other + 1
  elseif cache == "HIT" then
    hits = hits + 1
  else
    misses = misses + 1
  end
  local now = os.time()
  if now ~= last then
    last = now
    io.write(string.format('ws {"t":%d,"hit":%d,"miss":%d,"other":%d}\n', now, hits, misses, other))
    io.flush()
  end
end

if pause > 0 then
  delay = function()
    return pause
  end
end

dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "../report.lua")
