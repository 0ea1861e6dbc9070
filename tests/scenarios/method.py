class Greeter:
    def __init__(self, name):
        self.name = name

    def greet(self):
        return self.decorate("hello " + self.name)

    @staticmethod
    def decorate(text):
        return text.upper()


if __name__ == "__main__":
    Greeter("world").greet()
