"""Reports of messages (docs/moderation.md "Reports"): any member reports a room message once (a
repeat counts nothing); the creator's and moderators' sockets hear `report_opened` and list the
reports; reports from 3 different members (the creator's threshold) hide the message for
everyone but the creator and the moderators, live (`message_hidden`) and in join pages,
recovery and history, keeping seq gapless; a review dismisses (shown again) or removes
(deleted) it, in the moderation log; the backend lists, filters and reviews through the server
API and gets `message.reported` webhooks. SQLite (one process) and MariaDB + Redis (two)."""

from __future__ import annotations

from typing import Any

from tests.conftest import Cluster
from tests.support import Api, Client, err, ok, send
from tests.test_webhooks import Receiver, receiver, webhook_server  # noqa: F401 (fixtures)
from webhooks import MESSAGE_REPORTED, MODERATION_ACTION


def gapless(page: list[dict[str, Any]]) -> None:
    seqs = [m["seq"] for m in page]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs


async def _reports_scenario(url_a: str, url_b: str, api: Api, uid: Any) -> None:
    cre, mod, spammer = uid("cre"), uid("mod"), uid("spam")
    reporters = [uid(f"r{i}") for i in range(4)]
    tokens = {u: api.user(u) for u in (cre, mod, spammer, *reporters)}
    for u in (mod, spammer, *reporters):
        api.membership(cre, u, 500)
    api.server("PUT", f"/creators/{cre}/moderators/{mod}")
    room = api.room(cre, "Lounge", 0)
    c, m = await Client(url_a, tokens[cre]).connect(), await Client(url_b, tokens[mod]).connect()
    s = await Client(url_a, tokens[spammer]).connect()
    rs = [await Client(url_a if i % 2 else url_b, tokens[u]).connect() for i, u in enumerate(reporters)]
    everyone = [c, m, s, *rs]
    try:
        for x in everyone:
            ok(await x.call("join", {"conversation_id": room}))
        msg = ok(await send(s, room, "buy cheap followers"))["message"]
        ok(await send(c, room, "welcome"))

        # validation
        for bad in ({"message_id": msg["id"], "reason": "boring"}, {"message_id": msg["id"]},
                    {"message_id": msg["id"], "reason": "spam", "note": "x" * 501},
                    {"message_id": msg["id"], "reason": "spam", "note": 5}, {"reason": "spam"}):
            assert err(await rs[0].call("report", bad)) == "invalid"
        assert err(await rs[0].call("report", {"message_id": "999999999", "reason": "spam"})) == "not_found"
        assert err(await s.call("report", {"message_id": msg["id"], "reason": "spam"})) == "invalid"  # own message

        # first report: the creator and the moderator hear it; a repeat counts nothing
        first = ok(await rs[0].call("report", {"message_id": msg["id"], "reason": "spam", "note": " bot "}))
        assert first["created"] is True
        report = first["report"]
        assert (report["message_id"], report["reporter_id"], report["reason"], report["note"], report["status"]) == (
            msg["id"], reporters[0], "spam", "bot", "open")
        for x in (c, m):
            opened = await x.wait_for("report_opened", lambda e: e["report"]["id"] == report["id"])
            assert opened["open_reports"] == 1 and opened["hidden"] is False
            assert opened["message"]["body"] == "buy cheap followers"
        again = ok(await rs[0].call("report", {"message_id": msg["id"], "reason": "hate"}))
        assert again == {"ok": True, "created": False, "report": report}
        assert err(await rs[0].call("reports", {"creator_id": cre})) == "forbidden"

        # the third member hides it, for everyone but the creator and the moderators
        ok(await rs[1].call("report", {"message_id": msg["id"], "reason": "spam"}))
        ok(await rs[2].call("report", {"message_id": msg["id"], "reason": "harassment"}))
        for x in everyone:
            hidden = await x.wait_for("message_hidden", lambda e: e["message_id"] == msg["id"])
            assert hidden == {"conversation_id": room, "message_id": msg["id"], "seq": msg["seq"], "hidden": True}
        opened = await m.wait_for("report_opened", lambda e: e["open_reports"] == 3)
        assert opened["hidden"] is True
        for x, token in ((rs[3], tokens[reporters[3]]), (s, tokens[spammer])):
            for page in (ok(await x.call("join", {"conversation_id": room}))["messages"],
                         ok(await x.call("join", {"conversation_id": room, "since_seq": 0}))["messages"],
                         ok(await x.call("history", {"conversation_id": room}))["messages"],
                         api.client(token, "GET", f"/conversations/{room}/messages").json()["messages"]):
                shown = next(y for y in page if y["id"] == msg["id"])
                assert shown["hidden"] is True and shown["hidden_reason"] == "reported" and shown["body"] == ""
                assert shown["seq"] == msg["seq"]
                gapless(page)
        for x in (c, m):
            shown = next(y for y in ok(await x.call("join", {"conversation_id": room}))["messages"]
                         if y["id"] == msg["id"])
            assert shown["hidden"] is True and shown["body"] == "buy cheap followers"
        assert err(await s.call("edit", {"message_id": msg["id"], "body": "innocent"})) == "forbidden"

        # the listing: socket (moderator) and server API
        listed = ok(await m.call("reports", {"creator_id": cre}))
        assert [r["reporter_id"] for r in listed["reports"]] == reporters[2::-1]
        assert all(r["open_reports"] == 3 and r["hidden"] and r["message"]["body"] == "buy cheap followers"
                   for r in listed["reports"])
        assert ok(await c.call("reports", {}))["reports"] == listed["reports"]  # the creator's own by default
        page = api.server("GET", f"/creators/{cre}/reports?limit=2").json()
        assert [r["id"] for r in page["reports"]] == [r["id"] for r in listed["reports"][:2]]
        rest = api.server("GET", f"/creators/{cre}/reports?cursor={page['next_cursor']}").json()
        assert [r["id"] for r in rest["reports"]] == [report["id"]] and rest["next_cursor"] is None
        assert api.server("GET", f"/creators/{cre}/reports?status=resolved").json()["reports"] == []
        assert api.server("GET", f"/creators/{cre}/reports?status=bogus").status_code == 400
        assert api.server("GET", f"/creators/{cre}/reports?conversation_id={room}").json()["reports"] == listed["reports"]

        # dismissed by the moderator: shown again, live and in pages; logged
        assert err(await rs[3].call("review_report", {"message_id": msg["id"], "action": "dismiss"})) == "forbidden"
        assert err(await m.call("review_report", {"message_id": msg["id"], "action": "ban"})) == "invalid"
        done = ok(await m.call("review_report", {"message_id": msg["id"], "action": "dismiss", "note": "fine"}))
        assert done["resolved"] == 3 and done["action"] == "dismiss" and done["by"] == mod
        for x in everyone:
            shown = await x.wait_for("message_hidden", lambda e: e["message_id"] == msg["id"] and not e["hidden"])
            assert shown["message"]["body"] == "buy cheap followers"
        await c.wait_for("report_resolved", lambda e: e["message_id"] == msg["id"] and e["action"] == "dismiss")
        page4 = ok(await rs[3].call("join", {"conversation_id": room}))["messages"]
        assert next(y for y in page4 if y["id"] == msg["id"])["body"] == "buy cheap followers"
        assert "hidden" not in next(y for y in page4 if y["id"] == msg["id"])
        log = ok(await c.call("moderation_log", {"limit": 1}))["entries"][0]
        assert (log["action"], log["actor_id"], log["target_id"], log["message_id"], log["reason"]) == (
            "report_dismissed", mod, spammer, msg["id"], "fine")
        resolved = api.server("GET", f"/creators/{cre}/reports?status=resolved").json()["reports"]
        assert len(resolved) == 3 and all(r["status"] == "dismissed" and r["resolved_by"] == mod for r in resolved)
        # a repeat of a dismissed report counts nothing: still shown
        assert ok(await rs[0].call("report", {"message_id": msg["id"], "reason": "spam"}))["created"] is False
        assert ok(await m.call("reports", {"creator_id": cre}))["reports"] == []

        # threshold 1 (server API): one report hides; the backend removes it (deleted for everyone)
        assert api.server("GET", f"/creators/{cre}/report-settings").json() == {"creator_id": cre, "hide_threshold": 3}
        assert api.server("PUT", f"/creators/{cre}/report-settings", {"hide_threshold": -1}).status_code == 400
        r = api.server("PUT", f"/creators/{cre}/report-settings", {"hide_threshold": 1})
        assert r.status_code == 200 and r.json() == {"creator_id": cre, "hide_threshold": 1}
        bad = ok(await send(s, room, "second spam"))["message"]
        ok(await rs[3].call("report", {"message_id": bad["id"], "reason": "other"}))
        await rs[0].wait_for("message_hidden", lambda e: e["message_id"] == bad["id"] and e["hidden"])
        r = api.server("POST", f"/messages/{bad['id']}/review", {"action": "remove"})
        assert r.status_code == 200 and r.json()["resolved"] == 1 and r.json()["message"]["deleted"] is True
        for x in everyone:
            await x.wait_for("message_updated", lambda e: e["id"] == bad["id"] and e["deleted"])
        entries = api.server("GET", f"/creators/{cre}/moderation-log?limit=1").json()["entries"]
        assert (entries[0]["action"], entries[0]["actor_id"]) == ("report_removed", None)
        assert api.server("POST", "/messages/999999999/review", {"action": "remove"}).status_code == 404
        assert api.server("POST", f"/messages/{bad['id']}/review", {"action": "x"}).status_code == 400
        # a message in a direct conversation is not reported
        direct = api.direct(tokens[reporters[0]], cre)
        dm = ok(await send(c, direct, "private"))["message"]
        assert err(await rs[0].call("report", {"message_id": dm["id"], "reason": "spam"})) == "invalid"
    finally:
        for x in everyone:
            await x.close()


async def test_reports_in_one_process(shared_sqlite: Any, uid: Any) -> None:
    url = shared_sqlite.servers[0].url
    await _reports_scenario(url, url, shared_sqlite.api, uid)


async def test_reports_across_processes(shared_mysql_cluster: Any, uid: Any) -> None:
    cluster = shared_mysql_cluster
    await _reports_scenario(cluster.servers[0].url, cluster.servers[1].url, cluster.apis[0], uid)


async def test_message_reported_webhook(webhook_server: Cluster, receiver: Receiver, uid: Any) -> None:  # noqa: F811
    """Each new report (not a repeat) is one signed `message.reported`, from either process; the
    review is a `moderation.action`."""
    apis = webhook_server.apis
    urls = [s.url for s in webhook_server.servers]
    cre, spammer, r1, r2 = uid("cre"), uid("spam"), uid("r1"), uid("r2")
    tokens = {u: apis[0].user(u) for u in (cre, spammer, r1, r2)}
    for u in (spammer, r1, r2):
        apis[0].membership(cre, u, 100)
    room = apis[0].room(cre, "Lounge", 0)
    apis[0].server("PUT", f"/creators/{cre}/report-settings", {"hide_threshold": 2})
    s, a, b = (await Client(urls[0], tokens[spammer]).connect(), await Client(urls[0], tokens[r1]).connect(),
               await Client(urls[-1], tokens[r2]).connect())
    try:
        msg = ok(await send(s, room, "spam"))["message"]
        ok(await a.call("report", {"message_id": msg["id"], "reason": "spam", "note": "a bot"}))
        ok(await a.call("report", {"message_id": msg["id"], "reason": "spam"}))  # a repeat: no event
        ok(await b.call("report", {"message_id": msg["id"], "reason": "hate"}))
        await receiver.await_(lambda rc: sum(x.event["type"] == MESSAGE_REPORTED for x in rc.delivered) >= 2)
        r = apis[-1].server("POST", f"/messages/{msg['id']}/review", {"action": "dismiss"})
        assert r.status_code == 200, r.text
        await receiver.await_(lambda rc: any(x.event["type"] == MODERATION_ACTION for x in rc.delivered))
        assert receiver.bad_signatures == 0
        reported = sorted((x.event["data"] for x in receiver.delivered if x.event["type"] == MESSAGE_REPORTED),
                          key=lambda d: d["open_reports"])
        assert len(reported) == 2
        assert [(d["report"]["reporter_id"], d["report"]["reason"], d["open_reports"], d["hidden"]) for d in reported] \
            == [(r1, "spam", 1, False), (r2, "hate", 2, True)]
        first = reported[0]
        assert first["report"]["message_id"] == msg["id"] and first["report"]["conversation_id"] == room
        assert first["report"]["creator_id"] == cre and first["report"]["sender_id"] == spammer
        assert first["report"]["note"] == "a bot" and first["hide_threshold"] == 2
        action = next(x.event["data"] for x in receiver.delivered if x.event["type"] == MODERATION_ACTION)
        assert action["action"] == "report_dismissed" and action["message_id"] == msg["id"]
    finally:
        for x in (s, a, b):
            await x.close()
