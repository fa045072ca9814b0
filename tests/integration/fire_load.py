"""Fire LoadPing messagios from a process of its own (RUN and N as arguments)."""

import sys

import django


def main() -> None:
    run, count = sys.argv[1], int(sys.argv[2])
    django.setup()
    from tests.testapp.messagio import LoadPing

    for n in range(count):
        LoadPing(f"{run}-{n}").fire()


if __name__ == "__main__":
    main()
