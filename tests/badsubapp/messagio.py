from messagio import listen_to_message


class NotAMessagio:
    pass


@listen_to_message(NotAMessagio)
def listener(msg):
    pass
