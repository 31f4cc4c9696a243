-- Read the given buckets whole, in one step: the buckets an export rewrites (core/storage/viewfile.py). One
-- reply for them all, where a pipeline of HGETALLs gave the client one reply to parse per bucket (at 20,000
-- users a 1,000-user drop touches ~1,000 buckets of one user or two).
-- ARGV: 1 bucket key prefix, 2 dictionary epoch key, then the bucket numbers
-- Returns {the dictionary epoch ("" when none) the values were written against, then each bucket's HGETALL}
local prefix = ARGV[1]
local out = {redis.call('GET', ARGV[2]) or ''}
for i = 3, #ARGV do
  out[#out + 1] = redis.call('HGETALL', prefix .. ARGV[i])
end
return out
