-- Prometheus counters kept in Redis (core/ops/metrics.py reads them): monotonic, and shared by every server and
-- worker process on any machine, so restarts and several processes add up. Prepended to the scripts that
-- count (core/storage/codec.py lua(..., with_counters=True)); writes only, call it after a script's checks.
local LATENCY_BOUNDS = {'0.1', '0.25', '0.5', '1', '2.5', '5', '10', '30', '60', '120', '300'}

-- A file whose last batch just merged: count it, and how long it took from its first byte read.
local function count_merged_file(counters, report)
  redis.call('HINCRBY', counters, 'files:merged', 1)
  local started = tonumber(redis.call('HGET', report, 'started_at') or '')
  if not started then
    return
  end
  local now = redis.call('TIME')
  local seconds = math.max(0, tonumber(now[1]) + tonumber(now[2]) / 1000000 - started)
  for _, bound in ipairs(LATENCY_BOUNDS) do
    if seconds <= tonumber(bound) then
      redis.call('HINCRBY', counters, 'latency:le:' .. bound, 1)
    end
  end
  redis.call('HINCRBY', counters, 'latency:count', 1)
  redis.call('HINCRBYFLOAT', counters, 'latency:sum', seconds)
end

local function count_users(counters, new, updated, dup)
  if new > 0 then redis.call('HINCRBY', counters, 'users:new', new) end
  if updated > 0 then redis.call('HINCRBY', counters, 'users:updated', updated) end
  if dup > 0 then redis.call('HINCRBY', counters, 'users:duplicate', dup) end
end
