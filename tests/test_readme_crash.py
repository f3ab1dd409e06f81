from examples.notify import notify_all, send_email, send_push


def test_a_killed_push_is_sent_again_and_nothing_else_is(runner_supervisor, runner_client):
    order = {"order_id": "o-1", "delays": {"email": 0.1, "push": 1.0}}
    run = runner_client.start(notify_all, order, id="order-1")

    # Half a second into the push, SIGKILL the worker sending it (the email is out by then).
    runner_supervisor.kill_when_running(send_push, after=0.5)

    assert run.result(timeout=30)["channels_notified"] == 4
    history = runner_client.history("order-1")
    assert history.count(send_email) == 1
    assert history.outcomes(send_push) == ["died", "resolved"]
