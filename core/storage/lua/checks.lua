-- The checks every script makes before its first write: Redis does not undo a script that fails half-way,
-- so a script reads and checks everything first and refuses with an error while nothing is written yet.
-- Prepended to every script (core/storage/codec.py lua()); `local expect, integer = checks('merge')` names
-- the script in its refusals.
local function checks(script)
  -- A key of ours holds the type we write there, or nothing yet.
  local function expect(key, kind)
    local found = redis.call('TYPE', key)['ok']
    if found ~= 'none' and found ~= kind then
      return error(script .. ' refused: ' .. key .. ' is a ' .. found .. ', expected a ' .. kind)
    end
  end
  -- A value we count with holds an integer, or nothing yet.
  local function integer(value, what)
    if value and not string.match(value, '^%-?%d+$') then
      return error(script .. ' refused: ' .. what .. ' holds ' .. value .. ', not an integer')
    end
  end
  return expect, integer
end
