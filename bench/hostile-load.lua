-- wrk script for bench/hostile-load.sh's hostile client: cycles over the bodies in the files
-- listed in $HOSTILE (space-separated).
local bodies = {}
for path in string.gmatch(os.getenv("HOSTILE") or "", "%S+") do
  local f = assert(io.open(path, "rb"))
  bodies[#bodies + 1] = f:read("*a")
  f:close()
end
-- With DISTINCT set to a file of one review a line (bench/hostile-gen.py's distinct.jsonl),
-- every other request is the next of those: declarations that differ on every request.
local distinct = {}
if (os.getenv("DISTINCT") or "") ~= "" then
  for line in io.lines(os.getenv("DISTINCT")) do distinct[#distinct + 1] = line end
end
local n = 0
wrk.method = "POST"
wrk.path = "/mutate"
wrk.headers["Content-Type"] = "application/json"

function request()
  n = n + 1
  if #distinct > 0 and (#bodies == 0 or n % 2 == 0) then
    return wrk.format(nil, nil, nil, distinct[math.floor(n / 2) % #distinct + 1])
  end
  return wrk.format(nil, nil, nil, bodies[(n % #bodies) + 1])
end
