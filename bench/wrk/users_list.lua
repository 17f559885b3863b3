-- GET /users?limit=20&offset=O&order=-created_at (page plus total), with
-- the offset drawn from [0, MAX_OFFSET] in steps of the page size.
-- usage: wrk ... -s bench/wrk/users_list.lua URL -- MAX_OFFSET [LIMIT]
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
end

local pages, limit
function init(args)
  limit = tonumber(args[2]) or 20
  pages = math.floor((tonumber(args[1]) or 0) / limit)
  math.randomseed(os.time() * 1000 + (tid or 0) * 7919)
end

function request()
  local offset = math.random(0, pages) * limit
  return wrk.format("GET", "/users?limit=" .. limit .. "&offset=" .. offset .. "&order=-created_at")
end
