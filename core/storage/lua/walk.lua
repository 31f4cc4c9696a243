-- Walk the user buckets in export order from a given bucket, inside Redis: the bucket sizes cost Redis a
-- few milliseconds here, where BUCKETS client round trips (mostly on empty buckets) would cost far more.
-- Serves both the export (from a bucket cursor, skip 0) and the console's pages (from 0, skip = start).
-- ARGV: 1 bucket key prefix, 2 bucket count, 3 first bucket, 4 users to skip, 5 users wanted,
--       6 dictionary epoch key, 7 "numbered" to put each returned bucket's number before its HGETALL
-- Returns {next bucket to read (= bucket count when done), users to skip in the first returned bucket,
--          the dictionary epoch ("" when none) the returned values were written against,
--          then each returned bucket's HGETALL}; whole buckets only, so a bucket is never read in halves.
local prefix, buckets, b = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local start, want = tonumber(ARGV[4]), tonumber(ARGV[5])
local numbered = ARGV[7] == 'numbered'
local seen, skip, out = 0, nil, {}
while b < buckets do
  local size = redis.call('HLEN', prefix .. b)
  b = b + 1
  if size > 0 then
    if skip == nil and seen + size > start then
      skip = start - seen
    end
    seen = seen + size
    if skip ~= nil then
      if numbered then
        out[#out + 1] = b - 1
      end
      out[#out + 1] = redis.call('HGETALL', prefix .. (b - 1))
      if seen >= start + want then
        break
      end
    end
  end
end
table.insert(out, 1, redis.call('GET', ARGV[6]) or '')
table.insert(out, 1, skip or 0)
table.insert(out, 1, b)
return out
