-- wrk script for bench/hostile-load.sh's hostile client: cycles over the bodies in the files
-- listed in $HOSTILE (space-separated), and with DISTINCT=1 also sends pods whose ~30 KB
-- declarations differ on every request (what a byte-bounded cache must survive).
local bodies = {}
for path in string.gmatch(os.getenv("HOSTILE") or "", "%S+") do
  local f = assert(io.open(path, "rb"))
  bodies[#bodies + 1] = f:read("*a")
  f:close()
end
local distinct = os.getenv("DISTINCT") == "1"
local n = 0
wrk.method = "POST"
wrk.path = "/mutate"
wrk.headers["Content-Type"] = "application/json"

local function declaration(i)
  local list, ann = {}, {}
  for j = 1, 200 do
    list[#list + 1] = string.format("- file: f%d-%d\\n  secret: /bench/s%d-%d\\n", i, j, i, j)
  end
  for j = 1, 300 do
    ann[#ann + 1] = string.format('"kura.dev/secret.g%d-%d": "/bench/g%d-%d"', i, j, i, j)
  end
  return string.format(
    '{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"d%d",' ..
    '"kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},' ..
    '"namespace":"bench","operation":"CREATE","userInfo":{"username":"bench"},"object":{"apiVersion":"v1","kind":"Pod",' ..
    '"metadata":{"name":"p%d","namespace":"bench","annotations":{"kura.dev/inject":"true","kura.dev/secrets":"%s",%s}},' ..
    '"spec":{"containers":[{"name":"app","image":"app"}]}}}}',
    i, i, table.concat(list), table.concat(ann, ","))
end

function request()
  n = n + 1
  if distinct and (#bodies == 0 or n % 2 == 0) then
    return wrk.format(nil, nil, nil, declaration(n))
  end
  return wrk.format(nil, nil, nil, bodies[(n % #bodies) + 1])
end
