-- GET /users/{id} with ids drawn uniformly from [first, last].
-- usage: wrk ... -s bench/wrk/users_get.lua URL -- FIRST_ID LAST_ID
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
end

local first, last
function init(args)
  first = tonumber(args[1]) or 1
  last = tonumber(args[2]) or first
  math.randomseed(os.time() * 1000 + (tid or 0) * 7919)
end

function request()
  return wrk.format("GET", "/users/" .. math.random(first, last))
end
