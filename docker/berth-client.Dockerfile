# The berth-client image: nothing but the berth binary, the shared
# libraries it needs, fusermount3 and a few /etc files. Built by
# docker/build-image.sh from a staged root file system; pulls nothing.
FROM scratch
# A tar, not a directory: ADD keeps the archive's owners and the setuid bit
# of fusermount3 (the classic builder's COPY drops setuid bits).
ADD rootfs.tar /
ENV PATH=/usr/local/bin:/usr/bin:/bin
LABEL org.opencontainers.image.title="berth-client" \
      org.opencontainers.image.description="Runs an application with a Berth namespace mounted at \$BERTH_MOUNT (needs --device /dev/fuse --cap-add SYS_ADMIN)"
ENTRYPOINT ["/usr/local/bin/berth", "container-run", "--"]
