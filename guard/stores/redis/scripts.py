"""The Lua scripts of the Redis store: each check-and-update is one script, run with EVALSHA.

Every script touches only keys of one hash slot (those of one task, `guard:{<task_id>}:…`,
or one agent), all passed in KEYS, so they also run on Redis Cluster. Numbers travel as
strings (`%.17g`) so timestamps round-trip exactly; a Lua number returned to Redis would be
truncated to an integer.

Approvals of a task live in one hash, `guard:{<task_id>}:apr`, with one field per attribute:
`j:<id>` (the approval as created, JSON), `s:<id>` (status), `e:<id>` (expires_at),
`r:<id>` (approvals required), `g:<id>` (call digest), `n:<id>` (approvals so far),
`d:<id>` (the decisions, a JSON array appended to as a string) and `w:<id>:<approver>`
(this approver has decided).
"""

from __future__ import annotations

__all__ = [
    "ADMIT_AND_RECORD",
    "ADMIT_CALL",
    "AGENT_EVENT",
    "APPEND_AUDIT",
    "CLAIM_CREDENTIALS",
    "CLAIM_DELIVERIES",
    "CONSUME_APPROVAL",
    "DECIDE_APPROVAL",
    "DELETE_DELIVERY",
    "END_TASK",
    "HOLD_CREDENTIAL",
    "IDEMPOTENT",
    "LATEST_APPROVAL",
    "OBSERVE_ACTIVITY",
    "OPEN_APPROVAL",
    "POP_DUE",
    "RECORD_AND_FINISH",
    "REGISTER_CLIENT",
    "ROTATE_REFRESH",
    "SAVE_DELIVERY",
    "SET_SUSPENDED",
]

_NUM = "local function num(x) return string.format('%.17g', x) end\n"

_APPROVAL = """
local function approval(apr, id)
  local f = redis.call('HMGET', apr, 'j:' .. id, 's:' .. id, 'd:' .. id)
  if not f[1] then return false end
  return {f[1], f[2], f[3]}
end
"""

# The admission steps shared by ADMIT_CALL and ADMIT_AND_RECORD. `f` is the task hash's
# (status, expires_at, idle_s, last_call_at, calls, max_calls); a refusal is {0, reason, rule_id,
# retry_after, calls}; rate i has its key at KEYS[kbase + i] and (rule_id, calls, per_s) at
# ARGV[abase + 3i - 2 .. abase + 3i].
_ADMISSION = """
local function refuse_inactive(f, now, inflight, parent)
  if f[1] ~= 'active' or now >= tonumber(f[2]) or (f[3] ~= '' and now - tonumber(f[4]) >= tonumber(f[3])) then
    return {0, 'task_inactive', '', '', f[5]}
  end
  if parent ~= '' and redis.call('SISMEMBER', inflight, parent) == 0 then
    return {0, 'txn_inactive', '', '', f[5]}
  end
  return nil
end
local function refuse_over_limits(f, now, nrates, kbase, abase)
  if f[6] ~= '' and tonumber(f[5]) >= tonumber(f[6]) then return {0, 'budget_exhausted', '', '', f[5]} end
  for i = 1, nrates do
    local key, limit, per = KEYS[kbase + i], tonumber(ARGV[abase + 3 * i - 1]), tonumber(ARGV[abase + 3 * i])
    redis.call('ZREMRANGEBYSCORE', key, '-inf', num(now - per))
    if redis.call('ZCARD', key) >= limit then
      local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
      local retry = per
      if oldest[2] then retry = tonumber(oldest[2]) + per - now end
      return {0, 'rate_limited', ARGV[abase + 3 * i - 2], num(retry), f[5]}
    end
  end
  return nil
end
local function count_call(nrates, kbase, abase, now_s, call_id, entry)
  for i = 1, nrates do
    local key, per = KEYS[kbase + i], tonumber(ARGV[abase + 3 * i])
    redis.call('ZADD', key, now_s, call_id)
    redis.call('PEXPIRE', key, math.ceil(per * 1000) + 1000)
  end
  local calls = redis.call('HINCRBY', KEYS[1], 'calls', 1)
  redis.call('HSET', KEYS[1], 'last_call_at', now_s)
  redis.call('SADD', KEYS[2], entry)
  redis.call('SADD', KEYS[3], call_id)
  return calls
end
"""

# KEYS: task, hist, inflight, rate keys… ARGV: now, call_id, history_entry, parent_call_id ('' none),
# count ('1'/'0'), then (rule_id, calls, per_s) for each rate.
# Returns {ok, reason, rule_id, retry_after, calls}.
ADMIT_CALL = _NUM + _ADMISSION + """
local f = redis.call('HMGET', KEYS[1], 'status', 'expires_at', 'idle_s', 'last_call_at', 'calls', 'max_calls')
if not f[1] then return {0, 'not_found', '', '', '0'} end
local now = tonumber(ARGV[1])
local refusal = refuse_inactive(f, now, KEYS[3], ARGV[4])
if refusal then return refusal end
if ARGV[5] ~= '1' then return {1, '', '', '', f[5]} end
local nrates = (#ARGV - 5) / 3
refusal = refuse_over_limits(f, now, nrates, 3, 5)
if refusal then return refusal end
return {1, '', '', '', tostring(count_call(nrates, 3, 5, ARGV[1], ARGV[2], ARGV[3]))}
"""

# ADMIT_CALL and APPEND_AUDIT of the decision record in one script (one round trip).
# KEYS: task, hist, inflight, audit list, audit tail, rate keys… ARGV: now, call_id, history_entry,
# parent_call_id ('' none), count ('1'/'0'), seq, prev_hash, hash, record json, then (rule_id, calls,
# per_s) for each rate. A refusal changes nothing and appends nothing: {0, reason, rule_id,
# retry_after, calls}. When the chain's tail is not (seq - 1, prev_hash) it changes nothing either
# and answers {2, tail seq, tail hash, '', calls}, so the caller rehashes and runs it again.
# Admitted and appended: {1, '', '', '', calls}.
ADMIT_AND_RECORD = _NUM + _ADMISSION + """
local f = redis.call('HMGET', KEYS[1], 'status', 'expires_at', 'idle_s', 'last_call_at', 'calls', 'max_calls')
if not f[1] then return {0, 'not_found', '', '', '0'} end
local now = tonumber(ARGV[1])
local refusal = refuse_inactive(f, now, KEYS[3], ARGV[4])
if refusal then return refusal end
local count = ARGV[5] == '1'
local nrates = (#ARGV - 9) / 3
if count then
  refusal = refuse_over_limits(f, now, nrates, 5, 9)
  if refusal then return refusal end
end
local tail = redis.call('HMGET', KEYS[5], 'seq', 'hash')
local tseq, thash = tail[1] or '0', tail[2] or string.rep('0', 64)
if tonumber(tseq) ~= tonumber(ARGV[6]) - 1 or thash ~= ARGV[7] then return {2, tseq, thash, '', f[5]} end
local calls = f[5]
if count then calls = count_call(nrates, 5, 9, ARGV[1], ARGV[2], ARGV[3]) end
redis.call('RPUSH', KEYS[4], ARGV[9])
redis.call('HSET', KEYS[5], 'seq', ARGV[6], 'hash', ARGV[8])
return {1, '', '', '', tostring(calls)}
"""

# APPEND_AUDIT of a call's last record and the end of the call (its Txn-Token stops working) in
# one script. KEYS: audit list, audit tail, inflight. ARGV: seq, prev_hash, hash, record json, call_id.
# Appends and ends the call when the tail is (seq - 1, prev_hash): {1}; else changes nothing:
# {0, tail seq, tail hash}.
RECORD_AND_FINISH = """
local tail = redis.call('HMGET', KEYS[2], 'seq', 'hash')
local seq, hash = tail[1] or '0', tail[2] or string.rep('0', 64)
if tonumber(seq) == tonumber(ARGV[1]) - 1 and hash == ARGV[2] then
  redis.call('RPUSH', KEYS[1], ARGV[4])
  redis.call('HSET', KEYS[2], 'seq', ARGV[1], 'hash', ARGV[3])
  redis.call('SREM', KEYS[3], ARGV[5])
  return {1}
end
return {0, seq, hash}
"""

# KEYS: task, inflight, pending, apr, hist, latest, audit list, audit tail. ARGV: status, ended_at,
# end_reason, state ttl in ms ('' kept), audit ttl in ms ('' kept). The task's state gets its
# retention TTL here, in the operation that ends it (rate windows expire by themselves).
# Returns false when the task was not active, else {json, status, ended_at, end_reason, approval ids…}.
END_TASK = """
if redis.call('HGET', KEYS[1], 'status') ~= 'active' then return false end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'ended_at', ARGV[2], 'end_reason', ARGV[3])
redis.call('DEL', KEYS[2])
local pending = redis.call('HVALS', KEYS[3])
for _, id in ipairs(pending) do
  if redis.call('HGET', KEYS[4], 's:' .. id) == 'pending' then redis.call('HSET', KEYS[4], 's:' .. id, 'expired') end
end
redis.call('DEL', KEYS[3])
if ARGV[4] ~= '' then
  for _, k in ipairs({KEYS[1], KEYS[4], KEYS[5], KEYS[6]}) do redis.call('PEXPIRE', k, ARGV[4]) end
end
if ARGV[5] ~= '' then
  redis.call('PEXPIRE', KEYS[7], ARGV[5])
  redis.call('PEXPIRE', KEYS[8], ARGV[5])
end
local out = redis.call('HMGET', KEYS[1], 'json', 'status', 'ended_at', 'end_reason')
for _, f in ipairs(redis.call('HKEYS', KEYS[4])) do
  if string.sub(f, 1, 2) == 'j:' then out[#out + 1] = string.sub(f, 3) end
end
return out
"""

# KEYS: a sorted set. ARGV: max score, limit. Removes and returns the members scored at most
# ARGV[1] (at most ARGV[2] of them), so that each is handed to one caller.
POP_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return due
"""

# KEYS: pending, latest, apr. ARGV: id, call_digest, created_at, expires_at, required, json.
# Returns {created, json, status, decisions}.
OPEN_APPROVAL = _APPROVAL + """
local id, digest = ARGV[1], ARGV[2]
local ex = redis.call('HGET', KEYS[1], digest)
if ex then
  local s = redis.call('HGET', KEYS[3], 's:' .. ex)
  if s == 'pending' and tonumber(redis.call('HGET', KEYS[3], 'e:' .. ex)) > tonumber(ARGV[3]) then
    local a = approval(KEYS[3], ex)
    return {0, a[1], a[2], a[3]}
  end
  if s == 'pending' then redis.call('HSET', KEYS[3], 's:' .. ex, 'expired') end
  redis.call('HDEL', KEYS[1], digest)
end
redis.call('HSET', KEYS[3], 'j:' .. id, ARGV[6], 's:' .. id, 'pending', 'e:' .. id, ARGV[4],
           'r:' .. id, ARGV[5], 'g:' .. id, digest, 'n:' .. id, '0', 'd:' .. id, '[]')
redis.call('HSET', KEYS[1], digest, id)
redis.call('HSET', KEYS[2], digest, id)
return {1, ARGV[6], 'pending', '[]'}
"""

# KEYS: pending, apr. ARGV: id, approver, decision, decision_json, now.
# Returns {outcome, json, status, decisions} (outcome not_found alone).
DECIDE_APPROVAL = _APPROVAL + """
local apr, id = KEYS[2], ARGV[1]
local a = approval(apr, id)
if not a then return {'not_found'} end
local function unpend(status)
  redis.call('HSET', apr, 's:' .. id, status)
  redis.call('HDEL', KEYS[1], redis.call('HGET', apr, 'g:' .. id))
end
if a[2] == 'pending' and tonumber(redis.call('HGET', apr, 'e:' .. id)) <= tonumber(ARGV[5]) then
  unpend('expired')
  a[2] = 'expired'
end
if a[2] ~= 'pending' then return {'closed', a[1], a[2], a[3]} end
local who = 'w:' .. id .. ':' .. ARGV[2]
if redis.call('HEXISTS', apr, who) == 1 then return {'duplicate', a[1], a[2], a[3]} end
redis.call('HSET', apr, who, '1')
local d = '[' .. ARGV[4] .. ']'
if a[3] ~= '[]' then d = string.sub(a[3], 1, -2) .. ',' .. ARGV[4] .. ']' end
redis.call('HSET', apr, 'd:' .. id, d)
local status = 'pending'
if ARGV[3] == 'deny' then
  status = 'denied'
elseif ARGV[3] == 'approve' then
  local n = redis.call('HINCRBY', apr, 'n:' .. id, 1)
  if n >= tonumber(redis.call('HGET', apr, 'r:' .. id)) then status = 'approved' end
end
if status ~= 'pending' then unpend(status) end
return {'recorded', a[1], status, d}
"""

# KEYS: latest, apr. ARGV: call_digest, now. Returns false or {id, json, status, decisions}.
CONSUME_APPROVAL = _APPROVAL + """
local id = redis.call('HGET', KEYS[1], ARGV[1])
if not id then return false end
local a = approval(KEYS[2], id)
if not a or a[2] ~= 'approved' then return false end
if tonumber(redis.call('HGET', KEYS[2], 'e:' .. id)) <= tonumber(ARGV[2]) then return false end
redis.call('HSET', KEYS[2], 's:' .. id, 'consumed')
return {id, a[1], 'consumed', a[3]}
"""

# KEYS: latest, pending, apr. ARGV: call_digest, now. A pending approval past its expiry is
# expired on the way. Returns false or {id, json, status, decisions}.
LATEST_APPROVAL = _APPROVAL + """
local id = redis.call('HGET', KEYS[1], ARGV[1])
if not id then return false end
local a = approval(KEYS[3], id)
if not a then return false end
if a[2] == 'pending' and tonumber(redis.call('HGET', KEYS[3], 'e:' .. id)) <= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[3], 's:' .. id, 'expired')
  redis.call('HDEL', KEYS[2], ARGV[1])
  a[2] = 'expired'
end
return {id, a[1], a[2], a[3]}
"""

# KEYS: audit list, audit tail hash. ARGV: seq, prev_hash, hash, record json.
# Appends when the tail is (seq - 1, prev_hash): returns {1}; else {0, tail seq, tail hash}.
APPEND_AUDIT = """
local tail = redis.call('HMGET', KEYS[2], 'seq', 'hash')
local seq, hash = tail[1] or '0', tail[2] or string.rep('0', 64)
if tonumber(seq) == tonumber(ARGV[1]) - 1 and hash == ARGV[2] then
  redis.call('RPUSH', KEYS[1], ARGV[4])
  redis.call('HSET', KEYS[2], 'seq', ARGV[1], 'hash', ARGV[3])
  return {1}
end
return {0, seq, hash}
"""

# The inventory counters of one agent event, one command instead of four. KEYS: agent hash, its
# tools set. ARGV: counter field, now, tool ('' for none). Sent with EVAL (never NOSCRIPT), so it
# can ride in the round trip of another script's EVALSHA and never needs sending again.
AGENT_EVENT = """
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('HSETNX', KEYS[1], 'first_seen', ARGV[2])
redis.call('HSET', KEYS[1], 'last_seen', ARGV[2])
if ARGV[3] ~= '' then redis.call('SADD', KEYS[2], ARGV[3]) end
return 1
"""

# KEYS: agent hash. ARGV: '1' suspend / '0' restore, reason, actor, now.
# Returns 1 when the suspension changed, 0 when it already was so.
SET_SUSPENDED = """
local was = redis.call('HGET', KEYS[1], 'suspended') == '1'
if ARGV[1] == '1' then
  if was then return 0 end
  redis.call('HSET', KEYS[1], 'suspended', '1', 'suspended_reason', ARGV[2], 'suspended_by', ARGV[3],
             'suspended_at', ARGV[4])
  return 1
end
if not was then return 0 end
redis.call('HDEL', KEYS[1], 'suspended', 'suspended_reason', 'suspended_by', 'suspended_at')
return 1
"""

# KEYS: deliveries (id -> json), leases (id -> "lease_until owner"). ARGV: owner, now, lease_until.
# Returns {id, json, id, json, …} of the deliveries claimed.
CLAIM_DELIVERIES = """
local out = {}
local leases = redis.call('HGETALL', KEYS[2])
for i = 1, #leases, 2 do
  local id, lease = leases[i], leases[i + 1]
  local sp = string.find(lease, ' ', 1, true)
  local until_, owner = tonumber(string.sub(lease, 1, sp - 1)), string.sub(lease, sp + 1)
  if owner == ARGV[1] or until_ < tonumber(ARGV[2]) then
    local body = redis.call('HGET', KEYS[1], id)
    if body then
      redis.call('HSET', KEYS[2], id, ARGV[3] .. ' ' .. ARGV[1])
      out[#out + 1] = id
      out[#out + 1] = body
    else
      redis.call('HDEL', KEYS[2], id)
    end
  end
end
return out
"""


# KEYS: the refresh token's object, its used mark, the next token's object. ARGV: ttl in ms.
# A token used before answers "reused" and changes nothing (the caller revokes the family's task).
ROTATE_REFRESH = """
local obj = redis.call('GET', KEYS[1])
if not obj then return {'unknown', ''} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {'reused', obj} end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
redis.call('SET', KEYS[3], obj, 'PX', ARGV[1])
return {'rotated', obj}
"""

# KEYS: the registered clients (sorted set: client id scored by expiry), the new client's grant
# key, the source's attempt counter (all under the hash tag {oauth}). ARGV: client id, its JSON,
# ttl ms, now, max clients, attempts per window, window ms. Answers {outcome, retry-after ms}.
REGISTER_CLIENT = """
local attempts = redis.call('INCR', KEYS[3])
if attempts == 1 then redis.call('PEXPIRE', KEYS[3], ARGV[7]) end
if attempts > tonumber(ARGV[6]) then
  local left = redis.call('PTTL', KEYS[3])
  if left < 0 then left = tonumber(ARGV[7]) end
  return {'rate_limited', tostring(left)}
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[5]) then return {'full', '0'} end
redis.call('ZADD', KEYS[1], tonumber(ARGV[4]) + tonumber(ARGV[3]) / 1000, ARGV[1])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return {'registered', '0'}
"""

# KEYS: task creds hash. ARGV: slot, value, previous ('' = none). Sets the slot to value when it
# holds `previous` (compare-and-set); answers whatever the slot holds afterwards.
HOLD_CREDENTIAL = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if (cur == false and ARGV[3] == '') or cur == ARGV[3] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return ARGV[2]
end
return cur
"""

# KEYS: task creds hash. Takes every holding of the task (field, value, …) and deletes them.
CLAIM_CREDENTIALS = """
local all = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
return all
"""

# A webhook delivery and its lease, written together (one slot: `guard:{deliveries}`). Sent with
# EVAL. KEYS: deliveries, leases. ARGV: id, json, "lease_until owner".
SAVE_DELIVERY = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 1
"""

# KEYS: deliveries, leases. ARGV: id.
DELETE_DELIVERY = """
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""


# KEYS: the agent's baseline hash, its set of tool.actions. ARGV: now, the clock hour, tool.action,
# the most tool.actions kept. Returns {first_at, known (1/0), calls this hour, busiest earlier hour}.
OBSERVE_ACTIVITY = """
redis.call('HSETNX', KEYS[1], 'first_at', ARGV[1])
local known = redis.call('SISMEMBER', KEYS[2], ARGV[3]) == 1
if not known and redis.call('SCARD', KEYS[2]) < tonumber(ARGV[4]) then redis.call('SADD', KEYS[2], ARGV[3]) end
local hour = tonumber(ARGV[2])
local cur = tonumber(redis.call('HGET', KEYS[1], 'hour') or '-1')
if hour > cur then
  local count = tonumber(redis.call('HGET', KEYS[1], 'count') or '0')
  local busiest = tonumber(redis.call('HGET', KEYS[1], 'busiest') or '0')
  if count > busiest then busiest = count end
  redis.call('HSET', KEYS[1], 'hour', ARGV[2], 'count', '0', 'busiest', tostring(busiest))
end
local calls = redis.call('HINCRBY', KEYS[1], 'count', 1)
local busiest = tonumber(redis.call('HGET', KEYS[1], 'busiest') or '0')
return {redis.call('HGET', KEYS[1], 'first_at'), known and 1 or 0, calls, busiest}
"""


# The scripts that may run twice: a second run changes nothing more and answers the same, so
# one whose round trip was lost (a connection broke under it: it may or may not have run) is
# sent again. Not the others: a second ADMIT_* counts the call twice, an audit append finds its
# own record as a moved tail and appends it again, END_TASK, OPEN_/DECIDE_/CONSUME_APPROVAL,
# ROTATE_REFRESH, POP_DUE, CLAIM_CREDENTIALS and REGISTER_CLIENT answer differently (already ended, a duplicate,
# reused, nothing left to take), SET_SUSPENDED answers "unchanged",
# OBSERVE_ACTIVITY counts the call twice.
# LATEST_APPROVAL: the expiry it applies is applied once. CLAIM_DELIVERIES: the same owner
# claims again what it claimed, with the same lease. (HOLD_CREDENTIAL could be sent again too,
# but it goes with another command in its round trip, through RedisConnection._eval.)
IDEMPOTENT = frozenset({"LATEST_APPROVAL", "CLAIM_DELIVERIES"})
