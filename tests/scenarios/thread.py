import threading


def worker(n):
    return sum(range(n))


if __name__ == "__main__":
    t = threading.Thread(target=worker, args=(3,))
    t.start()
    t.join()
