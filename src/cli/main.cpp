#include <cstdio>
#include <exception>

int main(int argc, char** argv) {
  (void)argc;
  (void)argv;
  std::puts("halo");
  return 0;
}
