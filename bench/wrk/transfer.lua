-- POST /transfers between two different accounts drawn from [first, last],
-- 1..10 cents each, so seeded balances (1,000,000 cents) never run out.
-- usage: wrk ... -s bench/wrk/transfer.lua URL -- FIRST_ID LAST_ID
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
end

local first, last
local headers = { ["Content-Type"] = "application/json" }
function init(args)
  first = tonumber(args[1]) or 1
  last = tonumber(args[2]) or (first + 1)
  math.randomseed(os.time() * 1000 + (tid or 0) * 7919)
end

function request()
  local from = math.random(first, last)
  local to = math.random(first, last - 1)
  if to >= from then to = to + 1 end
  local body = string.format('{"from_account":%d,"to_account":%d,"amount_cents":%d}',
                             from, to, math.random(1, 10))
  return wrk.format("POST", "/transfers", headers, body)
end
