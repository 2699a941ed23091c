-- wrk script for bench/soak.sh: one thread; cycles over the bodies in $BODIES (space-separated)
-- and sorts each answer: allowed, denied as expected (EXPECT_DENIED=1: every answer should deny),
-- denied for KURA009 (the store is out: expected while it is), or unexpected. Prints one line.
local bodies = {}
for path in string.gmatch(os.getenv("BODIES"), "%S+") do
  local f = assert(io.open(path, "rb"))
  bodies[#bodies + 1] = f:read("*a")
  f:close()
end
local expect_denied = os.getenv("EXPECT_DENIED") == "1"
local n = 0
allowed, denied, store_out, unexpected = 0, 0, 0, 0
wrk.method = "POST"
wrk.path = "/mutate"
wrk.headers["Content-Type"] = "application/json"

local threads = {}
function setup(thread) threads[#threads + 1] = thread end

function request()
  n = n + 1
  return wrk.format(nil, nil, nil, bodies[(n % #bodies) + 1])
end

function response(status, headers, body)
  if status ~= 200 then
    unexpected = unexpected + 1
  elseif string.find(body, '"allowed":true', 1, true) then
    if expect_denied then unexpected = unexpected + 1 else allowed = allowed + 1 end
  elseif string.find(body, "KURA009", 1, true) then
    store_out = store_out + 1
  elseif expect_denied then
    denied = denied + 1
  else
    unexpected = unexpected + 1
  end
end

function done(summary, latency, requests)
  local t = threads[1]
  io.write(string.format(
    "RESULT rps=%.0f p50_ms=%.2f p99_ms=%.2f allowed=%d denied=%d store_out=%d unexpected=%d errors=%d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    t:get("allowed"), t:get("denied"), t:get("store_out"), t:get("unexpected"),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
