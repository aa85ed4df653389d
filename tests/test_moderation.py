"""Moderation (docs/moderation.md): moderators per creator (appointed by the creator over a socket
or by the backend), who delete any message in the creator's rooms and time out and block members
but appoint nobody; timeouts and blocks take effect at once on every process (a socket on the
other process hears `moderation` and its next send is refused, a blocked member is taken out of
every room, the direct conversation and the creator channel); a block survives a membership
update; every action is in the moderation log. SQLite and MariaDB + Redis, on the shared servers."""

from __future__ import annotations

from typing import Any

from tests.support import Api, Client, barrier, err, ok, send

MAX_MINUTES = 7 * 24 * 60




async def connect(url: str, token: str) -> Client:
    return await Client(url, token).connect()


def community(api: Api, uid: Any) -> tuple[str, str, str, dict[str, str], str]:
    """A creator with a room, a moderator-to-be and a patron (both active members);
    returns (creator, moderator, patron, tokens by user id, room id)."""
    cre, mod, pat = uid("cre"), uid("mod"), uid("pat")
    tokens = {u: api.user(u) for u in (cre, mod, pat)}
    api.membership(cre, mod, 500)
    api.membership(cre, pat, 500)
    return cre, mod, pat, tokens, api.room(cre, "Lounge", 0)



async def _moderators_scenario(url_a: str, url_b: str, api_a: Api, api_b: Api, uid: Any) -> None:
    """The creator and the patron are on process A, the moderator on process B (the same process
    on SQLite): appointed and removed on A, the moderator acts through B."""
    cre, mod, pat, tokens, room = community(api_a, uid)
    c, m, p = await connect(url_a, tokens[cre]), await connect(url_b, tokens[mod]), await connect(url_a, tokens[pat])
    api = api_a
    try:
        # only the creator appoints: not the patron, and not for another creator
        assert err(await p.call("moderator", {"creator_id": cre, "user_id": mod, "on": True})) == "forbidden"
        assert err(await c.call("moderator", {"user_id": cre, "on": True})) == "invalid"
        assert err(await c.call("moderator", {"user_id": "bad id", "on": True})) == "invalid"
        assert ok(await c.call("moderator", {"user_id": mod, "on": True}))["moderator"] is True
        await m.wait_for("moderation", lambda e: e == {"action": "moderator_added", "creator_id": cre, "until": None})
        for s in (c, m, p):
            ok(await s.call("join", {"conversation_id": room}))
        msg = ok(await send(p, room, "spam"))["message"]
        other = ok(await send(c, room, "creator's"))["message"]
        # a patron deletes only their own; a moderator any message in the room
        assert err(await p.call("delete", {"message_id": other["id"]})) == "forbidden"
        deleted = ok(await m.call("delete", {"message_id": msg["id"]}))["message"]
        assert deleted["deleted"] and deleted["body"] == ""
        await p.wait_for("message_updated", lambda u: u["id"] == msg["id"] and u["deleted"])
        # a moderator appoints nobody
        assert err(await m.call("moderator", {"creator_id": cre, "user_id": pat, "on": True})) == "forbidden"
        for a in (api_a, api_b):
            assert a.server("GET", f"/creators/{cre}/moderators").json()["moderators"] == [mod]
        # removed by the backend (on A): no more deletes of others' messages (through B)
        r = api.server("DELETE", f"/creators/{cre}/moderators/{mod}")
        assert r.status_code == 200 and r.json() == {"creator_id": cre, "user_id": mod, "moderator": False}
        await m.wait_for("moderation", lambda e: e["action"] == "moderator_removed")
        msg2 = ok(await send(p, room, "again"))["message"]
        assert err(await m.call("delete", {"message_id": msg2["id"]})) == "forbidden"
        assert err(await m.call("timeout", {"creator_id": cre, "user_id": pat, "minutes": 5})) == "forbidden"
        m.events["moderation"].clear()
        assert api.server("PUT", f"/creators/{cre}/moderators/{mod}").json()["moderator"] is True
        await m.wait_for("moderation", lambda e: e["action"] == "moderator_added")
        ok(await m.call("delete", {"message_id": msg2["id"]}))
        await p.wait_for("message_updated", lambda u: u["id"] == msg2["id"] and u["deleted"])
    finally:
        for s in (c, m, p):
            await s.close()


async def test_moderators_delete_any_message_and_appoint_nobody(shared_any_server: Any, uid: Any) -> None:
    url, api = shared_any_server.servers[0].url, shared_any_server.api
    await _moderators_scenario(url, url, api, api, uid)


async def test_a_moderator_appointed_on_one_process_acts_through_the_other(shared_mysql_cluster: Any, uid: Any) -> None:
    cluster = shared_mysql_cluster
    await _moderators_scenario(cluster.servers[0].url, cluster.servers[1].url, cluster.apis[0], cluster.apis[1], uid)


async def test_timeout_refuses_sends_with_the_remaining_time(shared_any_server: Any, uid: Any) -> None:
    url, api = shared_any_server.servers[0].url, shared_any_server.api
    cre, mod, pat, tokens, room = community(api, uid)
    api.server("PUT", f"/creators/{cre}/moderators/{mod}")
    m, p = await connect(url, tokens[mod]), await connect(url, tokens[pat])
    try:
        ok(await p.call("join", {"conversation_id": room}))
        ok(await send(p, room, "before"))
        for bad in (-1, MAX_MINUTES + 1, "5", None):
            assert err(await m.call("timeout", {"creator_id": cre, "user_id": pat, "minutes": bad})) == "invalid"
        # nobody times out the creator; moderators do not time out each other
        assert err(await m.call("timeout", {"creator_id": cre, "user_id": cre, "minutes": 5})) == "forbidden"
        assert err(await p.call("timeout", {"creator_id": cre, "user_id": mod, "minutes": 5})) == "forbidden"
        done = ok(await m.call("timeout", {"creator_id": cre, "user_id": pat, "minutes": 5, "reason": "flood"}))
        event = await p.wait_for("moderation", lambda e: e["action"] == "timeout")
        assert event == {"action": "timeout", "creator_id": cre, "until": done["until"]}
        for _ in range(2):  # the database check, then what the socket remembers of it
            refused = await send(p, room, "during")
            assert err(refused) == "forbidden"
            assert "min" in refused["error"]["message"]
            assert refused["error"]["until"] == done["until"]
            assert 240 < refused["error"]["retry_after"] <= 300
        r = api.client(tokens[pat], "POST", f"/conversations/{room}/messages", {"body": "http", "client_msg_id": "h-1"})
        assert r.status_code == 403 and r.json()["error"]["until"] == done["until"]
        # others still post; the server API's bounds
        ok(await send(m, room, "mod speaks"))
        assert api.server("PUT", f"/creators/{cre}/timeouts/{pat}", {"minutes": 0}).status_code == 400
        assert api.server("PUT", f"/creators/{cre}/timeouts/{pat}",
                          {"minutes": MAX_MINUTES + 1}).status_code == 400
        # lifted: at once
        r = api.server("DELETE", f"/creators/{cre}/timeouts/{pat}")
        assert r.status_code == 200 and r.json()["until"] is None
        await p.wait_for("moderation", lambda e: e["action"] == "timeout_lifted")
        ok(await send(p, room, "after"))
    finally:
        await m.close()
        await p.close()


async def test_timeout_and_block_reach_the_other_process(shared_mysql_cluster: Any, uid: Any) -> None:
    cluster = shared_mysql_cluster
    api = cluster.apis[0]
    cre, mod, pat, tokens, room = community(api, uid)
    room2 = api.room(cre, "Backstage", 500)
    api.server("PUT", f"/creators/{cre}/moderators/{mod}")
    direct = api.direct(tokens[pat], cre)
    m = await connect(cluster.servers[0].url, tokens[mod])
    c = await connect(cluster.servers[0].url, tokens[cre])
    p = await connect(cluster.servers[1].url, tokens[pat])
    try:
        for cid in (room, room2, direct):
            ok(await p.call("join", {"conversation_id": cid}))
        ok(await c.call("join", {"conversation_id": direct}))
        ok(await p.call("subscribe", {"channel": f"creator:{cre}"}))
        ok(await send(p, room, "warm"))  # the socket now posts without a database read

        ok(await m.call("timeout", {"creator_id": cre, "user_id": pat, "minutes": 1}))
        await p.wait_for("moderation", lambda e: e["action"] == "timeout")
        assert err(await send(p, room, "timed out")) == "forbidden"
        assert err(await send(p, room2, "timed out")) == "forbidden"
        ok(await send(p, direct, "the direct conversation is not a room"))
        ok(await m.call("timeout", {"creator_id": cre, "user_id": pat, "minutes": 0}))
        await p.wait_for("moderation", lambda e: e["action"] == "timeout_lifted")
        ok(await send(p, room, "back"))

        # a block: out of both rooms, the direct conversation and the creator channel, at once
        ok(await m.call("block", {"creator_id": cre, "user_id": pat, "on": True, "reason": "abuse"}))
        for cid in (room, room2, direct):
            await p.wait_for("access_revoked", lambda e, cid=cid: e["conversation_id"] == cid)
        await p.wait_for("moderation", lambda e: e["action"] == "block")
        for cid in (room, room2, direct):
            assert err(await p.call("join", {"conversation_id": cid})) == "forbidden"
        assert err(await send(p, room, "blocked")) == "forbidden"
        assert err(await p.call("subscribe", {"channel": f"creator:{cre}"})) == "forbidden"
        # the creator still reads the direct conversation but no longer posts in it
        assert err(await send(c, direct, "to a blocked member")) == "forbidden"
        api.server("POST", "/publish", {"channel": f"creator:{cre}", "event": "news", "data": 1})
        await barrier(cluster.apis, [(pat, p)], "after-block")
        assert not [e for e in p.events["event"] if e["event"] == "news"]
        listed = api.client(tokens[pat], "GET", "/conversations").json()["conversations"]
        assert {x["conversation"]["id"] for x in listed} & {room, room2, direct} == set()
        assert api.client(tokens[pat], "GET", f"/conversations/{room}/messages").status_code == 403
        assert api.client(tokens[pat], "POST", "/conversations/direct", {"user_id": cre}).status_code == 403
        # a membership update does not undo it
        api.membership(cre, pat, 1000)
        assert err(await p.call("join", {"conversation_id": room2})) == "forbidden"
        assert err(await m.call("block", {"creator_id": cre, "user_id": mod, "on": True})) == "forbidden"

        r = cluster.apis[1].server("DELETE", f"/creators/{cre}/blocks/{pat}")
        assert r.status_code == 200 and r.json()["blocked"] is False
        await p.wait_for("moderation", lambda e: e["action"] == "unblock")
        for cid in (room, room2, direct):
            ok(await p.call("join", {"conversation_id": cid}))
        ok(await send(p, room2, "unblocked"))
        ok(await send(c, direct, "welcome back"))
    finally:
        for s in (m, c, p):
            await s.close()


async def _log_scenario(url_a: str, url_b: str, api_a: Api, api_b: Api, uid: Any) -> None:
    """The creator and the patron are on process A, the moderator on process B (the same process
    on SQLite): appointed on A, the moderator deletes and times out through B; the log reads the
    same through both."""
    cre, mod, pat, tokens, room = community(api_a, uid)
    c, m, p = await connect(url_a, tokens[cre]), await connect(url_b, tokens[mod]), await connect(url_a, tokens[pat])
    api = api_a
    try:
        ok(await c.call("moderator", {"user_id": mod, "on": True}))
        await m.wait_for("moderation", lambda e: e["action"] == "moderator_added")
        ok(await p.call("join", {"conversation_id": room}))
        msg = ok(await send(p, room, "bad"))["message"]
        ok(await m.call("delete", {"message_id": msg["id"]}))
        await p.wait_for("message_updated", lambda u: u["id"] == msg["id"] and u["deleted"])
        ok(await m.call("timeout", {"creator_id": cre, "user_id": pat, "minutes": 10, "reason": "cool down"}))
        await p.wait_for("moderation", lambda e: e["action"] == "timeout")
        assert err(await send(p, room, "timed out on A")) == "forbidden"
        assert api.server("PUT", f"/creators/{cre}/blocks/{pat}", {"reason": "repeat"}).status_code == 200
        ok(await c.call("block", {"creator_id": cre, "user_id": pat, "on": False}))

        expected = [("unblock", cre, ""), ("block", None, "repeat"), ("timeout", mod, "cool down"),
                    ("message_deleted", mod, ""), ("moderator_added", cre, "")]
        entries = ok(await m.call("moderation_log", {"creator_id": cre}))["entries"]
        assert [(e["action"], e["actor_id"], e["reason"]) for e in entries] == expected
        assert all(e["target_id"] == (mod if e["action"] == "moderator_added" else pat) for e in entries)
        assert entries[3]["message_id"] == msg["id"] and entries[2]["until"] is not None
        assert ok(await c.call("moderation_log", {}))["entries"] == entries  # the creator's own by default
        for a in (api_a, api_b):  # the backend reads the same log through either process
            assert a.server("GET", f"/creators/{cre}/moderation-log").json()["entries"] == entries
        assert err(await p.call("moderation_log", {"creator_id": cre})) == "forbidden"
        assert err(await m.call("moderation_log", {"creator_id": cre, "before_id": "x"})) == "invalid"

        page = api.server("GET", f"/creators/{cre}/moderation-log?limit=2").json()
        assert [e["id"] for e in page["entries"]] == [e["id"] for e in entries[:2]]
        rest = api.server("GET", f"/creators/{cre}/moderation-log?limit=10&cursor={page['next_cursor']}").json()
        assert rest["entries"] == entries[2:] and rest["next_cursor"] is None
        assert api.server("GET", f"/creators/{cre}/moderation-log?cursor=01").status_code == 400
        # the creator blocks a moderator: no longer one (logged after the block)
        ok(await c.call("block", {"creator_id": cre, "user_id": mod, "on": True}))
        assert api.server("GET", f"/creators/{cre}/moderators").json()["moderators"] == []
        latest = ok(await c.call("moderation_log", {"limit": 2}))["entries"]
        assert [(e["action"], e["target_id"]) for e in latest] == [("moderator_removed", mod), ("block", mod)]
        assert err(await m.call("moderation_log", {"creator_id": cre})) == "forbidden"
    finally:
        for s in (c, m, p):
            await s.close()


async def test_moderation_log_for_the_creator_moderators_and_backend(shared_any_server: Any, uid: Any) -> None:
    url, api = shared_any_server.servers[0].url, shared_any_server.api
    await _log_scenario(url, url, api, api, uid)


async def test_moderation_log_reads_the_same_on_both_processes(shared_mysql_cluster: Any, uid: Any) -> None:
    cluster = shared_mysql_cluster
    await _log_scenario(cluster.servers[0].url, cluster.servers[1].url, cluster.apis[0], cluster.apis[1], uid)


async def _slow_mode_scenario(url_a: str, url_b: str, api: Api, uid: Any) -> None:
    """The patron's two sockets are on `url_a` and `url_b` (two processes on the cluster)."""
    cre, mod, pat, tokens, room = community(api, uid)
    api.server("PUT", f"/creators/{cre}/moderators/{mod}")
    c, m = await connect(url_a, tokens[cre]), await connect(url_b, tokens[mod])
    p1, p2 = await connect(url_a, tokens[pat]), await connect(url_b, tokens[pat])
    try:
        for s in (c, m, p1, p2):
            assert ok(await s.call("join", {"conversation_id": room}))["slow_mode_s"] == 0
        assert err(await p1.call("slow_mode", {"conversation_id": room, "seconds": 30})) == "forbidden"
        assert err(await c.call("slow_mode", {"conversation_id": room, "seconds": 3601})) == "invalid"
        assert ok(await m.call("slow_mode", {"conversation_id": room, "seconds": 60})) == {
            "ok": True, "conversation_id": room, "seconds": 60}
        await p2.wait_for("slow_mode", lambda e: e == {"conversation_id": room, "seconds": 60})
        await p1.wait_for("slow_mode", lambda e: e["seconds"] == 60)
        assert ok(await p1.call("join", {"conversation_id": room}))["slow_mode_s"] == 60
        # a send that stores nothing (not the member's upload) does not use up the slot
        bad = await p1.call("send", {"conversation_id": room, "body": "x", "client_msg_id": "slow-0",
                                     "attachments": [999999999]})
        assert err(bad) == "not_found", bad
        first = ok(await p1.call("send", {"conversation_id": room, "body": "one", "client_msg_id": "slow-1"}))
        refused = await send(p2, room, "two")  # the other process, the same member
        assert err(refused) == "rate_limited"
        assert 0 < refused["error"]["retry_after"] <= 60 and "wait" in refused["error"]["message"]
        # a retry of the stored message gets the original, not the limit
        again = ok(await p2.call("send", {"conversation_id": room, "body": "one", "client_msg_id": "slow-1"}))
        assert again["message"]["id"] == first["message"]["id"]
        r = api.client(tokens[pat], "POST", f"/conversations/{room}/messages", {"body": "http", "client_msg_id": "h-2"})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0 and r.json()["error"]["retry_after"] > 0
        for s in (c, c, m, m):  # the creator and moderators are exempt
            ok(await send(s, room, "exempt"))
        r = api.server("PUT", f"/rooms/{room}/slow-mode", {"seconds": 0})
        assert r.status_code == 200 and r.json() == {"conversation_id": room, "seconds": 0}
        await p2.wait_for("slow_mode", lambda e: e["seconds"] == 0)
        ok(await send(p2, room, "free again"))
        ok(await send(p2, room, "and again"))
        log = api.server("GET", f"/creators/{cre}/moderation-log").json()["entries"]
        assert [(e["action"], e["actor_id"], e["conversation_id"], e["seconds"]) for e in log[:2]] == [
            ("slow_mode", None, room, 0), ("slow_mode", mod, room, 60)]
        assert api.server("PUT", "/rooms/999999999/slow-mode", {"seconds": 5}).status_code == 404
    finally:
        for s in (c, m, p1, p2):
            await s.close()


async def test_slow_mode_in_one_process(shared_sqlite: Any, uid: Any) -> None:
    url = shared_sqlite.servers[0].url
    await _slow_mode_scenario(url, url, shared_sqlite.api, uid)


async def test_slow_mode_is_cluster_wide(shared_mysql_cluster: Any, uid: Any) -> None:
    cluster = shared_mysql_cluster
    await _slow_mode_scenario(cluster.servers[0].url, cluster.servers[1].url, cluster.apis[0], uid)


async def test_blocked_members_get_no_pushes_of_the_creators_posts(tmp_path: Any) -> None:
    """The push audience of a creator's room post (the worker's fan-out page) leaves blocked
    members out, as it leaves out members who lost access. SQLite, in this process."""
    from chat import migrate, moderation, storage
    from chat.db import create_engine, session_factory
    from chat.service import ChatService

    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/push.db")
    try:
        await migrate.upgrade(engine)
        sessions = session_factory(engine)
        async with sessions.begin() as s:
            for u in ("cre", "a", "b"):
                await storage.upsert_user(s, u, u)
            for u in ("a", "b"):
                await storage.upsert_membership(s, "cre", u, 500, "active")
            room = (await storage.insert_room(s, "cre", "R", 0, "everyone")).id
            await moderation.set_blocked(s, "cre", "b", True)
        async with sessions() as s:
            assert await ChatService.push_audience_page(s, room, "cre", None, 100) == (["a"], None)
    finally:
        await engine.dispose()


async def _pins_scenario(url_a: str, url_b: str, api: Api, uid: Any) -> None:
    cre, mod, pat, tokens, room = community(api, uid)
    api.server("PUT", f"/creators/{cre}/moderators/{mod}")
    c, m, p = await connect(url_a, tokens[cre]), await connect(url_a, tokens[mod]), await connect(url_b, tokens[pat])
    try:
        ok(await c.call("join", {"conversation_id": room}))
        assert ok(await p.call("join", {"conversation_id": room}))["pinned"] == []
        ids = [ok(await send(c, room, f"post {i}"))["message"]["id"] for i in range(4)]
        assert err(await p.call("pin", {"message_id": ids[0], "on": True})) == "forbidden"
        for i in ids[:3]:
            ok(await m.call("pin", {"message_id": i, "on": True}))
        await p.wait_for("pins", lambda e: e == {"conversation_id": room, "message_ids": ids[:3]})
        assert err(await m.call("pin", {"message_id": ids[3], "on": True})) == "conflict"
        assert ok(await m.call("pin", {"message_id": ids[0], "on": True}))["message_ids"] == ids[:3]  # again: as it is
        pinned = ok(await p.call("join", {"conversation_id": room}))["pinned"]
        assert [x["id"] for x in pinned] == ids[:3] and pinned[0]["body"] == "post 0"
        r = api.server("DELETE", f"/messages/{ids[1]}/pin")
        assert r.status_code == 200 and r.json() == {"conversation_id": room, "message_ids": [ids[0], ids[2]]}
        await p.wait_for("pins", lambda e: e["message_ids"] == [ids[0], ids[2]])
        ok(await c.call("delete", {"message_id": ids[2]}))  # a deleted message is not shown pinned
        assert [x["id"] for x in ok(await p.call("join", {"conversation_id": room}))["pinned"]] == [ids[0]]
        assert err(await m.call("pin", {"message_id": ids[2], "on": True})) == "invalid"
        direct = api.direct(tokens[pat], cre)
        dm = ok(await send(p, direct, "private"))["message"]["id"]
        assert api.server("PUT", f"/messages/{dm}/pin").status_code == 400
        assert api.server("PUT", "/messages/999999999/pin").status_code == 404
        log = api.server("GET", f"/creators/{cre}/moderation-log?limit=4").json()["entries"]
        assert [(e["action"], e["message_id"]) for e in log] == [
            ("message_unpinned", ids[1]), ("message_pinned", ids[2]), ("message_pinned", ids[1]),
            ("message_pinned", ids[0])]
    finally:
        for s in (c, m, p):
            await s.close()


async def test_pins_in_one_process(shared_sqlite: Any, uid: Any) -> None:
    url = shared_sqlite.servers[0].url
    await _pins_scenario(url, url, shared_sqlite.api, uid)


async def test_pins_across_processes(shared_mysql_cluster: Any, uid: Any) -> None:
    cluster = shared_mysql_cluster
    await _pins_scenario(cluster.servers[0].url, cluster.servers[1].url, cluster.apis[0], uid)


async def test_moderation_overview_for_the_page(shared_any_server: Any, uid: Any) -> None:
    """GET /api/v1/moderation: whose rooms the user moderates, their running timeouts, and per
    creator they act for the moderators and the blocked / timed-out members (what the page shows)."""
    api = shared_any_server.api
    cre, mod, pat, tokens, _room = community(api, uid)
    other = uid("other")
    tokens[other] = api.user(other, "Olga Other")
    api.membership(cre, other, 500)

    def overview(user: str) -> dict[str, Any]:
        r = api.client(tokens[user], "GET", "/moderation")
        assert r.status_code == 200, r.text
        return dict(r.json())

    empty = {"creator_id": pat, "moderators": [], "blocked": [], "timed_out": []}
    assert overview(pat) == {"moderator_of": [], "timeouts": [], "teams": [empty]}
    assert api.server("PUT", f"/creators/{cre}/moderators/{mod}").status_code == 200
    until = api.server("PUT", f"/creators/{cre}/timeouts/{pat}", json={"minutes": 10}).json()["until"]
    assert api.server("PUT", f"/creators/{cre}/blocks/{other}", json={}).status_code == 200
    team = {"creator_id": cre, "moderators": [{"id": mod, "name": mod.title()}],
            "blocked": [{"id": other, "name": "Olga Other"}], "timed_out": [{"id": pat, "name": pat.title(), "until": until}]}
    mine = overview(cre)
    assert mine == {"moderator_of": [], "timeouts": [], "teams": [team]}
    assert overview(mod) == {"moderator_of": [cre], "timeouts": [],
                             "teams": [{"creator_id": mod, "moderators": [], "blocked": [], "timed_out": []}, team]}
    # the patron sees their own timeout, and nothing of the creator's team
    assert overview(pat) == {"moderator_of": [], "timeouts": [{"creator_id": cre, "until": until}], "teams": [empty]}
    # a lifted timeout and an unblock leave the lists
    assert api.server("DELETE", f"/creators/{cre}/timeouts/{pat}").status_code == 200
    assert api.server("DELETE", f"/creators/{cre}/blocks/{other}").status_code == 200
    assert overview(pat)["timeouts"] == []
    assert overview(cre)["teams"] == [{**team, "blocked": [], "timed_out": []}]
    assert api.client("not-a-token", "GET", "/moderation").status_code == 401
