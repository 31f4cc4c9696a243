-- One page of users in export order: the bucket hashes in bucket order. Walking the bucket sizes here
-- costs Redis a few milliseconds; doing it from the client would cost BUCKETS round trips' worth.
-- ARGV: 1 bucket key prefix, 2 bucket count, 3 start (users to skip), 4 count
-- Returns {users to skip in the first bucket returned, then each returned bucket's HGETALL}.
local prefix, buckets, start, want = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local seen, skip, out = 0, nil, {}
for b = 0, buckets - 1 do
  local size = redis.call('HLEN', prefix .. b)
  if size > 0 then
    if skip == nil and seen + size > start then
      skip = start - seen
    end
    if skip ~= nil then
      out[#out + 1] = redis.call('HGETALL', prefix .. b)
      if seen + size >= start + want then
        break
      end
    end
    seen = seen + size
  end
end
table.insert(out, 1, skip or 0)
return out
