-- mod_muc_bridge_fanout: lighter MUCs for a bridge component's occupants.
--
-- A bridge (mimi-bridge) puts every Matrix member of a portal into the MUC as an occupant of
-- its component domain. XEP-0045 then makes the room send each occupant's presence to every
-- other occupant and each message to every occupant: with N of the bridge's occupants that
-- is N^2 presences on joins and N copies of every message over the component connection, of
-- which the bridge needs one. Load this module on the MUC component and name the bridges'
-- component domains:
--
--   Component "conference.example.org" "muc"
--     modules_enabled = { "muc_bridge_fanout" }
--     muc_bridge_components = { "matrix.example.org" }
--
-- and the room stops sending a bridge's occupants what the bridge cannot use:
--   * the presence of one of its occupants to another of its occupants (the bridge knows its
--     own; every occupant still gets its own presence, and XMPP users get everyone's);
--   * more than one copy of a groupchat message: the sender's own occupant gets the
--     reflection, and a message from anyone else goes to one of the bridge's occupants.
-- XMPP users see the room exactly as before.

local jid_bare = require "util.jid".bare;
local jid_host = require "util.jid".host;

local bridges = module:get_option_set("muc_bridge_components", {});
local mod_muc = module:depends("muc");
local room_mt = mod_muc.room_mt;

local function bridge_of(occupant)
	local host = occupant and jid_host(occupant.bare_jid);
	if host and bridges:contains(host) then
		return host;
	end
end

-- Joining: the occupant list sent to a bridge's occupant leaves out the bridge's others.
local send_occupant_list = room_mt.send_occupant_list;
function room_mt:send_occupant_list(to, filter)
	local host = jid_host(to);
	if not bridges:contains(host) then
		return send_occupant_list(self, to, filter);
	end
	local to_bare = jid_bare(to);
	return send_occupant_list(self, to, function (nick, occupant)
		if occupant and occupant.bare_jid ~= to_bare and jid_host(occupant.bare_jid) == host then
			return false;
		end
		return filter == nil or filter(nick, occupant);
	end);
end

-- The occupant with this occupant JID, read without the copy get_occupant_by_nick makes
-- (this runs once per recipient of every broadcast). Occupants handed to the functions below
-- are copies too: they are told apart by their occupant JID (``nick``).
local function occupant_at(room, occupant_jid)
	local occupants = rawget(room, "_occupants");
	if occupants then
		return occupants[occupant_jid];
	end
	return room:get_occupant_by_nick(occupant_jid);
end

-- Presence broadcasts: not from one of a bridge's occupants to another.
local route_to_occupant = room_mt.route_to_occupant;
function room_mt:route_to_occupant(occupant, stanza)
	if stanza.name == "presence" then
		local host = bridge_of(occupant);
		if host then
			local from = occupant_at(self, stanza.attr.from);
			if from and from.nick ~= occupant.nick and jid_host(from.bare_jid) == host then
				return;
			end
		end
	end
	return route_to_occupant(self, occupant, stanza);
end

-- Messages: one copy per bridge.
local broadcast = room_mt.broadcast;
function room_mt:broadcast(stanza, cond_func)
	if stanza.name ~= "message" then
		return broadcast(self, stanza, cond_func);
	end
	local sender = occupant_at(self, stanza.attr.from);
	local sender_bridge = bridge_of(sender);
	local chosen = {};
	return broadcast(self, stanza, function (nick, occupant)
		if cond_func and not cond_func(nick, occupant) then
			return false;
		end
		local host = bridge_of(occupant);
		if not host then
			return true;
		end
		if host == sender_bridge then
			return occupant.nick == sender.nick;
		end
		if chosen[host] == nil then
			chosen[host] = occupant.nick;
		end
		return chosen[host] == occupant.nick;
	end);
end

function module.unload()
	room_mt.send_occupant_list = send_occupant_list;
	room_mt.route_to_occupant = route_to_occupant;
	room_mt.broadcast = broadcast;
end

module:log("info", "bridge occupants' fan-out trimmed for: %s", tostring(bridges));
