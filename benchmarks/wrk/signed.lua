-- wrk script for the ingress capacity benchmark: replays pre-signed callbacks, each once
-- (unique nonces), from a file of lines "timestamp<TAB>nonce<TAB>signature<TAB>body".
-- Usage: wrk -s signed.lua URL -- FILE
local reqs = {}
local i = 0

function init(args)
  local f = assert(io.open(args[1], "r"))
  for line in f:lines() do
    local ts, nonce, sig, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
    reqs[#reqs + 1] = wrk.format("POST", "/v1/callbacks/payment", {
      ["Content-Type"] = "application/json",
      ["X-Timestamp"] = ts,
      ["X-Nonce"] = nonce,
      ["X-Signature"] = sig,
    }, body)
  end
  f:close()
end

function request()
  i = i + 1
  if i > #reqs then
    i = 1 -- out of requests: a replayed nonce is refused (401), which fails the run
  end
  return reqs[i]
end
