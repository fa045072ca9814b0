"""messagio's filesystem broker: a worker never sees a message file before it is whole."""

import os

from kombu import Connection

from messagio import filesystem_broker


def test_a_message_file_is_under_its_queue_name_only_once_written(tmp_path, monkeypatch):
    options = {"data_folder_in": str(tmp_path), "data_folder_out": str(tmp_path)}
    listed_while_writing = []

    def dumps_and_look(payload):
        # What a worker listing the folder would find while the message is being written.
        listed_while_writing.extend(os.listdir(tmp_path))
        return real_dumps(payload)

    real_dumps = filesystem_broker.dumps
    monkeypatch.setattr(filesystem_broker, "dumps", dumps_and_look)

    with Connection(
        "filesystem://", transport=filesystem_broker.Transport, transport_options=options
    ) as connection:
        queue = connection.SimpleQueue("whole")
        queue.put({"n": 1})
        message = queue.get(timeout=5)
        queue.close()

    assert message.payload == {"n": 1}
    assert listed_while_writing
    assert not [name for name in listed_while_writing if name.endswith(".whole.msg")]
