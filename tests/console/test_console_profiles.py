"""Profile lookups on the processors' worker endpoints: the owner answers, the others say not_owned."""

from __future__ import annotations

from aiohttp import web

from processor.console.profiles import lookup, parse_endpoints
from tests.console_helpers import free_port, profile_endpoint


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"127.0.0.1:{runner.addresses[0][1]}"


def _unknown_profile_owner() -> web.Application:
    async def get(_request: web.Request) -> web.Response:
        return web.json_response({"error": "unknown_profile"}, status=404)

    app = web.Application()
    app.router.add_get("/profiles/{profile_id}", get)
    return app


async def test_the_owner_answers_after_the_others_say_not_owned() -> None:
    """Endpoints are asked in order; not_owned moves on, the owner's profile is returned with notes."""
    other, other_addr = await _serve(profile_endpoint({}, "t"))
    owner, owner_addr = await _serve(profile_endpoint({"p/1": {"id": "p/1", "first_name": "Ada"}}, "t"))
    try:
        found = await lookup((other_addr, owner_addr), "t", "p/1")
        assert found.answer is not None and found.answer["profile"]["first_name"] == "Ada"
        assert found.endpoint == owner_addr
        assert found.notes == [f"{other_addr}: does not own this profile"]
    finally:
        await other.cleanup()
        await owner.cleanup()


async def test_refusals_and_failures_are_explained() -> None:
    """A wrong token, an owner without the profile and a closed port each leave a note; no answer."""
    wrong, wrong_addr = await _serve(profile_endpoint({"p": {}}, "right"))
    empty, empty_addr = await _serve(_unknown_profile_owner())
    closed = f"127.0.0.1:{free_port()}"
    try:
        found = await lookup((wrong_addr, empty_addr, closed), "wrong", "p")
        assert found.answer is None
        assert "refused the console's token (401)" in found.notes[0]
        assert "holds no such profile" in found.notes[1]
        assert "unreachable" in found.notes[2]
    finally:
        await wrong.cleanup()
        await empty.cleanup()
    none = await lookup((), None, "p")
    assert none.answer is None and "FLOWHOOK_PROCESSOR_ENDPOINTS" in none.notes[0]


def test_endpoints_are_a_comma_separated_list() -> None:
    """Spaces and empty entries are ignored."""
    assert parse_endpoints(" 127.0.0.1:9101, ,127.0.0.1:9102 ") == ("127.0.0.1:9101", "127.0.0.1:9102")
    assert parse_endpoints(None) == ()
