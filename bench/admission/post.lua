-- wrk script: POST one AdmissionReview body (path in BENCH_BODY) on every request, and print
-- the figures as one JSON line at the end (latencies in microseconds), as bench/report.lua does.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local file = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.body = file:read("*a")
file:close()

-- The figures: bench/report.lua's done(), found beside this script whatever the cwd.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "../report.lua")
