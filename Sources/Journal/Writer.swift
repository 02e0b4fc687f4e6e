import Dispatch
import Glibc
import Locking
import Synchronization

/// A blocking hand-off of one result from the writer thread to a waiting caller.
/// The semaphore orders the write of `result` before its read.
final class Waiter<T: Sendable>: @unchecked Sendable {
    private let semaphore = DispatchSemaphore(value: 0)
    private var result: Result<T, JournalError>?

    func finish(_ value: Result<T, JournalError>) {
        result = value
        semaphore.signal()
    }

    func wait() -> Result<T, JournalError> {
        semaphore.wait()
        return result!
    }
}

/// One record of a pending append: what the writer needs to index it.
struct PendingRecord: Sendable {
    var operation: JournalRecord.Operation
    var key: String
    /// Frame length (in bytes).
    var length: Int
}

/// One `append` call, already encoded on the caller's thread.
struct PendingAppend: Sendable {
    var bytes: [UInt8]
    var records: [PendingRecord]
    var durable: Bool
    /// Set when encoding failed; the append is answered without writing anything.
    var rejection: JournalError?
    var completion: @Sendable (Result<Void, JournalError>) -> Void
}

/// The live records at one moment, and the files that hold them (kept open by this value).
struct ReplaySnapshot: Sendable {
    var locations: [Location]
    var files: [Int: JournalFile]
}

/// Work for the writer thread, in arrival order.
enum Work: Sendable {
    case append(PendingAppend)
    case sync(Waiter<Void>)
    case snapshot(Waiter<ReplaySnapshot>)
    case compact(Waiter<Void>)
    case compactionFinished(CompactionOutcome)
    case stop(Waiter<Void>)
}

/// The journal's engine: a mailbox any thread may post to, and one writer thread
/// that owns every file, the live index and the counters.
///
/// Group commit falls out of the loop: the writer takes *everything* in the mailbox,
/// writes all appends with one `pwrite`, answers the non-durable ones, then makes
/// one `fdatasync` cover all durable ones. While it syncs, new appends pile up in
/// the mailbox and form the next group, so under load the number of syncs tracks
/// disk latency, not request count.
///
/// `@unchecked Sendable`: the mutable stored properties below "writer-thread state"
/// are only touched by the writer thread (and by `init`, before it starts);
/// everything else is immutable or guarded by a `Locked` or an `Atomic`.
final class JournalCore: @unchecked Sendable {
    let directory: String
    let options: JournalOptions

    private struct Mailbox {
        var items: [Work] = []
        var sleeping = false
        var accepting = true
    }
    private let mailbox = Locked(Mailbox())
    private let wakeup = DispatchSemaphore(value: 0)
    private let published: Locked<JournalStats>
    private let writerThreadID = Atomic<UInt>(0)
    private let closeState = Locked(false)
    private let cancelCompaction = Atomic<Bool>(false)
    private let compactionQueue = DispatchQueue(label: "switchboard.journal.compaction")
    private let compactionGroup = DispatchGroup()
    private let lock: DirectoryLock
    /// The data directory's device and inode when the journal opened it: a path that
    /// leads elsewhere later (the directory removed, renamed or replaced) is not where
    /// the next start would find the records.
    private let directoryDevice: UInt64
    private let directoryInode: UInt64

    // MARK: writer-thread state
    private var files: [OpenFile]
    private var index: LiveIndex
    private var nextNumber: Int
    private var totalBytes: Int
    /// Bytes written to the active segment that no `fdatasync` has covered yet.
    private var unsynced = false
    private var poisoned: JournalError?
    private var appendedRecords = 0
    private var syncs = 0
    private var compactions = 0
    private var lastCompactionError: JournalError?
    /// Automatic compaction waits until total bytes reach this after a failure.
    private var autoCompactionFloor = 0
    private var running: (job: CompactionJob, waiters: [Waiter<Void>])?
    private var queuedCompactionWaiters: [Waiter<Void>] = []
    private var writeBuffer: [UInt8] = []

    /// Takes over `recovered` (and `lock`), makes sure an active segment exists, starts the writer.
    init(directory: String, options: JournalOptions, lock: DirectoryLock, recovered: Recovered) throws(JournalError) {
        self.directory = directory
        self.options = options
        self.lock = lock
        files = recovered.files
        index = recovered.index
        nextNumber = recovered.nextNumber
        totalBytes = recovered.files.reduce(0) { $0 + $1.size }
        published = Locked(JournalStats(liveBytes: 0, totalBytes: 0, segmentCount: 0, liveKeys: 0, liveRecords: 0,
                                       appendedRecords: 0, syncs: 0, compactions: 0, lastCompactionError: nil))
        var st = stat()
        guard stat(directory, &st) == 0 else { throw FileIO.error("stat", directory) }
        directoryDevice = UInt64(st.st_dev)
        directoryInode = UInt64(st.st_ino)
        if let last = files.last, last.file.type == .segment, last.size < options.segmentBytes {
            // Keep appending to the last segment.
        } else {
            try startSegment()
        }
        publish()
        let retained = Unmanaged.passRetained(self).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { argument in
            let core = Unmanaged<JournalCore>.fromOpaque(argument!).takeRetainedValue()
            core.runWriter()
            return nil
        }, retained)
        if rc != 0 {
            Unmanaged<JournalCore>.fromOpaque(retained).release()
            throw FileIO.error("pthread_create", directory, rc)
        }
        writerThreadID.store(UInt(bitPattern: Int(bitPattern: thread)), ordering: .releasing)
    }

    // MARK: any thread

    var stats: JournalStats { published.withLock { $0 } }

    /// True on the writer thread (inside a completion handler).
    var isWriterThread: Bool {
        UInt(bitPattern: Int(bitPattern: pthread_self())) == writerThreadID.load(ordering: .acquiring)
    }

    /// Posts `work`; false when the journal is closing (unless `force`).
    @discardableResult
    func post(_ work: Work, force: Bool = false) -> Bool {
        let (accepted, wake) = mailbox.withLock { box -> (Bool, Bool) in
            guard box.accepting || force else { return (false, false) }
            box.items.append(work)
            if box.sleeping {
                box.sleeping = false
                return (true, true)
            }
            return (true, false)
        }
        if wake { wakeup.signal() }
        return accepted
    }

    /// Posts a request and blocks for its answer; `.closed` if the journal is closing.
    func request<T: Sendable>(_ make: (Waiter<T>) -> Work) -> Result<T, JournalError> {
        precondition(!isWriterThread, "a Journal's blocking methods must not be called from its completion handlers")
        let waiter = Waiter<T>()
        guard post(make(waiter)) else { return .failure(.closed) }
        return waiter.wait()
    }

    /// Stops accepting work, cancels a running compaction, writes and syncs what is
    /// pending, stops the writer and releases the directory lock. Idempotent.
    /// From the writer thread itself it only starts the shutdown (it cannot wait for itself).
    func close() {
        closeState.withLock { closed in
            if closed { return }
            closed = true
            mailbox.withLock { $0.accepting = false }
            cancelCompaction.store(true, ordering: .relaxed)
            let waiter = Waiter<Void>()
            post(.stop(waiter), force: true)
            let thread = pthread_t(bitPattern: Int(bitPattern: writerThreadID.load(ordering: .acquiring)))
            if isWriterThread {
                pthread_detach(thread)
            } else {
                _ = waiter.wait()
                pthread_join(thread, nil)
            }
        }
    }

    // MARK: writer thread

    private func runWriter() {
        var stopped = false
        while !stopped {
            let items = takeWork()
            var i = 0
            while i < items.count && !stopped {
                switch items[i] {
                case .append:
                    var batch: [PendingAppend] = []
                    while i < items.count, case let .append(pending) = items[i] {
                        batch.append(pending)
                        i += 1
                    }
                    writeBatch(batch)
                    continue
                case let .sync(waiter):
                    let result = syncActive()
                    publish()
                    waiter.finish(result)
                case let .snapshot(waiter):
                    let open = Dictionary(uniqueKeysWithValues: files.map { ($0.file.number, $0.file) })
                    waiter.finish(.success(ReplaySnapshot(locations: index.locations(), files: open)))
                case let .compact(waiter):
                    startCompaction([waiter])
                case let .compactionFinished(outcome):
                    install(outcome)
                case let .stop(waiter):
                    waiter.finish(shutDown(leftover: items[(i + 1)...]))
                    stopped = true
                }
                i += 1
            }
            if !stopped { maybeCompact() }
        }
    }

    /// Everything in the mailbox; sleeps while it is empty.
    private func takeWork() -> [Work] {
        while true {
            let taken = mailbox.withLock { box -> [Work]? in
                if box.items.isEmpty {
                    box.sleeping = true
                    return nil
                }
                defer { box.items = [] }
                return box.items
            }
            if let taken { return taken }
            wakeup.wait()
        }
    }

    private func writeBatch(_ batch: [PendingAppend]) {
        var good: [PendingAppend] = []
        good.reserveCapacity(batch.count)
        for pending in batch {
            if let failure = pending.rejection ?? poisoned {
                pending.completion(.failure(failure))
            } else {
                good.append(pending)
            }
        }
        if good.isEmpty { return }
        if options.syncEveryRecord {
            for pending in good { writeAlone(pending) }
            return
        }
        var rest = good[...]
        while !rest.isEmpty { rest = writeChunk(of: rest) }
    }

    /// Writes the longest prefix of `appends` (at least one) that the active segment
    /// takes: appends go in while the segment is below `segmentBytes` where each starts,
    /// so no segment grows past `segmentBytes` by more than one append (one record of at
    /// most `maxRecordBytes`, unless the append holds several). Rolls over first when the
    /// segment is full (`rollOverIfFull`). Completes the appends written (durable ones
    /// once synced) and returns the rest; on a failure (or with the journal poisoned by
    /// an earlier chunk's failed sync), completes them all with it and returns none.
    private func writeChunk(of appends: ArraySlice<PendingAppend>) -> ArraySlice<PendingAppend> {
        // The sync of an earlier chunk of the batch failed: nothing more is written.
        if let poisoned {
            for pending in appends { pending.completion(.failure(poisoned)) }
            return []
        }
        do throws(JournalError) {
            try rollOverIfFull(adding: appends[appends.startIndex].bytes.count)
        } catch {
            // A removed data directory fails the rollover: say so (and stop) rather
            // than fail each batch with the missing path.
            let failure = checkInPlace() ?? error
            publish()
            for pending in appends { pending.completion(.failure(failure)) }
            return []
        }

        let active = files.count - 1
        let file = files[active].file
        let base = files[active].size
        var end = appends.startIndex
        var size = base
        repeat {
            size += appends[end].bytes.count
            end += 1
        } while end < appends.endIndex && size < options.segmentBytes
        let good = appends[..<end]
        writeBuffer.removeAll(keepingCapacity: true)
        for pending in good { writeBuffer.append(contentsOf: pending.bytes) }
        if let failure = write(writeBuffer, to: file, at: base) {
            publish()
            for pending in appends { pending.completion(.failure(failure)) }
            return []
        }
        var offset = base
        for pending in good {
            for record in pending.records {
                index.apply(record.operation, key: record.key,
                            at: Location(file: file.number, offset: offset, length: record.length))
                offset += record.length
                appendedRecords += 1
            }
        }
        grow(active, by: writeBuffer.count)
        if writeBuffer.capacity > 8 << 20 { writeBuffer = [] }

        publish()
        var anyDurable = false
        for pending in good {
            if pending.durable { anyDurable = true } else { pending.completion(.success(())) }
        }
        guard anyDurable else { return appends[end...] }
        var result = syncActive()
        // A durable answer must mean the records are where the next start reads them:
        // checked after the sync, so a removal while it ran is not acknowledged.
        if case .success = result, let failure = checkInPlace() { result = .failure(failure) }
        publish()
        for pending in good where pending.durable { pending.completion(result) }
        return appends[end...]
    }

    /// `syncEveryRecord` mode: one `pwrite` and one `fdatasync` per record.
    private func writeAlone(_ pending: PendingAppend) {
        do throws(JournalError) {
            try rollOverIfFull(adding: pending.bytes.count)
            let active = files.count - 1
            let file = files[active].file
            let base = files[active].size
            var offset = 0
            for record in pending.records {
                let frame = Array(pending.bytes[offset..<offset + record.length])
                if let failure = write(frame, to: file, at: base + offset) {
                    if offset > 0 { try truncateBack(file, to: base) }
                    throw failure
                }
                offset += record.length
                if case let .failure(failure) = syncActive() { throw failure }
            }
            // Where the next start reads them (see `writeBatch`), after the syncs.
            if pending.durable, let failure = checkInPlace() { throw failure }
            offset = base
            for record in pending.records {
                index.apply(record.operation, key: record.key,
                            at: Location(file: file.number, offset: offset, length: record.length))
                offset += record.length
                appendedRecords += 1
            }
            grow(active, by: pending.bytes.count)
            publish()
            pending.completion(.success(()))
        } catch {
            publish()
            pending.completion(.failure(error))
        }
    }

    /// Writes `bytes` at `offset`; on failure cuts the file back to `offset` and returns the error.
    private func write(_ bytes: [UInt8], to file: JournalFile, at offset: Int) -> JournalError? {
        do throws(JournalError) {
            try FileIO.pwriteAll(file.fd, bytes, at: offset, path: file.path)
            if !bytes.isEmpty { unsynced = true }
            return nil
        } catch {
            try? truncateBack(file, to: offset)
            return error
        }
    }

    /// Cuts a failed write off the active segment; if even that fails, refuses further writes.
    private func truncateBack(_ file: JournalFile, to size: Int) throws(JournalError) {
        do throws(JournalError) {
            try FileIO.truncate(file.fd, to: size, path: file.path)
        } catch {
            poisoned = .poisoned("could not cut a failed write: \(error)")
            publish()
            throw error
        }
    }

    private func grow(_ active: Int, by bytes: Int) {
        files[active].size += bytes
        totalBytes += bytes
    }

    /// Poisons the journal (and returns why) when its files are no longer where the next
    /// start would read them: the active segment was unlinked (the data directory was
    /// deleted while open), or the directory's path no longer leads to the directory
    /// the journal opened (removed, renamed or replaced — then a second process could
    /// even lock a fresh directory there). Records acknowledged after that would be
    /// lost at the next start, so from then on every write fails. Two system calls;
    /// run once per write batch that holds a durable append.
    private func checkInPlace() -> JournalError? {
        if let poisoned { return poisoned }
        let active = files[files.count - 1].file
        var st = stat()
        let reason: String
        if fstat(active.fd, &st) == 0 && st.st_nlink == 0 {
            reason = "\(active.path) was deleted while in use (was the data directory removed?)"
        } else if stat(directory, &st) != 0 {
            reason = "the data directory \(directory) is gone: \(String(cString: strerror(errno)))"
        } else if UInt64(st.st_dev) != directoryDevice || UInt64(st.st_ino) != directoryInode {
            reason = "the data directory \(directory) was replaced by another directory"
        } else {
            return nil
        }
        let failure = JournalError.poisoned(reason + "; records written now would be lost at the next start")
        poisoned = failure
        publish()
        return failure
    }

    /// `fdatasync`s the active segment if anything is unsynced (and `fsync` is on).
    /// A failed sync poisons the journal: the kernel may have dropped the dirty pages.
    private func syncActive() -> Result<Void, JournalError> {
        if let poisoned { return .failure(poisoned) }
        guard unsynced else { return .success(()) }
        guard options.fsync else {
            unsynced = false
            return .success(())
        }
        let file = files[files.count - 1].file
        do throws(JournalError) {
            try FileIO.fdatasync(file.fd, path: file.path)
            syncs += 1
            unsynced = false
            return .success(())
        } catch {
            let failure = JournalError.poisoned("a sync failed (\(error.description))")
            poisoned = failure
            publish()
            return .failure(failure)
        }
    }

    /// Starts a new segment when the active one has reached `segmentBytes`, or when it
    /// holds records and `incoming` more bytes would take it past `segmentBytes +
    /// maxRecordBytes` (the most a segment holds: what a file-size limit is sized
    /// against, `JournalOptions.segmentBytes(fittingFileSizeLimit:)`).
    private func rollOverIfFull(adding incoming: Int) throws(JournalError) {
        let size = files[files.count - 1].size
        let (most, overflow) = options.segmentBytes.addingReportingOverflow(options.maxRecordBytes)
        if size >= options.segmentBytes || (size > Format.fileHeaderBytes && !overflow && size + incoming > most) {
            try rollOver()
        }
    }

    /// Seals the active segment (synced, so a later segment never outlives an earlier
    /// one's tail) and starts the next.
    private func rollOver() throws(JournalError) {
        if case let .failure(failure) = syncActive() { throw failure }
        try startSegment()
    }

    /// Creates `segment-<nextNumber>.log` with its header, synced together with the
    /// directory entry before any record goes in, and makes it the active segment.
    /// On failure no file is left behind and the number is used again next time (a
    /// full disk fails every rollover until it has room: each must not leave a file).
    private func startSegment() throws(JournalError) {
        let number = nextNumber
        let path = directory + "/" + Format.fileName(.segment, number)
        let fd = try FileIO.open(path, O_RDWR | O_CREAT | O_EXCL)
        do throws(JournalError) {
            try FileIO.pwriteAll(fd, Format.fileHeader(.segment, number), at: 0, path: path)
            if options.fsync {
                try FileIO.fdatasync(fd, path: path)
                try FileIO.syncDirectory(directory)
            }
        } catch {
            unlink(path)
            Glibc.close(fd)
            throw error
        }
        nextNumber += 1
        let file = JournalFile(type: .segment, number: number, path: path, fd: fd)
        files.append(OpenFile(file: file, size: Format.fileHeaderBytes))
        totalBytes += Format.fileHeaderBytes
        unsynced = false
    }

    // MARK: compaction (writer thread)

    private func maybeCompact() {
        guard options.automaticCompaction, running == nil, poisoned == nil else { return }
        let garbage = totalBytes - index.liveBytes
        guard garbage >= options.compactionMinBytes, totalBytes >= autoCompactionFloor,
              Double(totalBytes) >= options.compactionRatio * Double(index.liveBytes) else { return }
        startCompaction([])
    }

    /// Seals the active segment (if it holds records) and compacts every sealed file
    /// on the compaction queue. With one already running, `waiters` get the next one.
    private func startCompaction(_ waiters: [Waiter<Void>]) {
        if running != nil {
            queuedCompactionWaiters += waiters
            return
        }
        if cancelCompaction.load(ordering: .relaxed) {
            for waiter in waiters { waiter.finish(.failure(.closed)) }
            return
        }
        if let poisoned {
            for waiter in waiters { waiter.finish(.failure(poisoned)) }
            return
        }
        do throws(JournalError) {
            if files[files.count - 1].size > Format.fileHeaderBytes { try rollOver() }
        } catch {
            compactionFailed(error)
            for waiter in waiters { waiter.finish(.failure(error)) }
            return
        }
        let inputs = files.dropLast().map(\.file)
        if inputs.isEmpty || (inputs.count == 1 && inputs[0].type == .compacted) {
            // Nothing sealed, or only a compacted file that nothing has superseded since.
            for waiter in waiters { waiter.finish(.success(())) }
            return
        }
        let last = inputs[inputs.count - 1].number
        let job = CompactionJob(directory: directory, last: last, inputs: inputs,
                                locations: index.locations(through: last), fsync: options.fsync)
        running = (job, waiters)
        compactionGroup.enter()
        compactionQueue.async { [self] in
            let outcome = job.run(cancelled: { self.cancelCompaction.load(ordering: .relaxed) })
            post(.compactionFinished(outcome), force: true)
            compactionGroup.leave()
        }
    }

    /// Swaps the compacted file in for its inputs (writer thread), then deletes the inputs.
    private func install(_ outcome: CompactionOutcome) {
        guard let current = running else { return }
        let job = current.job, waiters = current.waiters
        running = nil
        switch outcome {
        case .cancelled:
            for waiter in waiters { waiter.finish(.failure(.closed)) }
        case let .failed(error):
            compactionFailed(error)
            publish()
            for waiter in waiters { waiter.finish(.failure(error)) }
        case let .done(output, size, newOffsets):
            index.relocate(through: job.last, into: output.number, old: job.locations, newOffsets: newOffsets)
            let replaced = files.filter { $0.file.number <= job.last }
            files.removeAll { $0.file.number <= job.last }
            files.insert(OpenFile(file: output, size: size), at: 0)
            totalBytes = files.reduce(0) { $0 + $1.size }
            // Failures here only leave superseded files, which the next open deletes.
            for old in replaced { try? FileIO.unlink(old.file.path) }
            if options.fsync { try? FileIO.syncDirectory(directory) }
            compactions += 1
            lastCompactionError = nil
            autoCompactionFloor = 0
            publish()
            for waiter in waiters { waiter.finish(.success(())) }
        }
        if !queuedCompactionWaiters.isEmpty {
            let next = queuedCompactionWaiters
            queuedCompactionWaiters = []
            startCompaction(next)
        }
    }

    private func compactionFailed(_ error: JournalError) {
        lastCompactionError = error
        autoCompactionFloor = totalBytes + options.compactionMinBytes
    }

    /// Waits out a running (cancelled) compaction, syncs, closes the files, drops the lock.
    /// `leftover`: work taken with the stop request; only internal work can follow a stop.
    private func shutDown(leftover: ArraySlice<Work>) -> Result<Void, JournalError> {
        var late = Array(leftover)
        while true {
            for work in late {
                switch work {
                case let .compactionFinished(outcome): install(outcome)
                case let .append(pending): pending.completion(.failure(.closed))
                case let .sync(waiter), let .compact(waiter), let .stop(waiter): waiter.finish(.failure(.closed))
                case let .snapshot(waiter): waiter.finish(.failure(.closed))
                }
            }
            if running == nil { break }
            compactionGroup.wait()
            late = takeNowait()
        }
        for waiter in queuedCompactionWaiters { waiter.finish(.failure(.closed)) }
        queuedCompactionWaiters = []
        let result = syncActive()
        publish()
        files.removeAll()
        lock.release()
        return result
    }

    private func takeNowait() -> [Work] {
        mailbox.withLock { box -> [Work] in
            defer { box.items = [] }
            return box.items
        }
    }

    private func publish() {
        let snapshot = JournalStats(liveBytes: index.liveBytes, totalBytes: totalBytes, segmentCount: files.count,
                                    liveKeys: index.keys.count, liveRecords: index.liveRecords,
                                    appendedRecords: appendedRecords, syncs: syncs, compactions: compactions,
                                    lastCompactionError: lastCompactionError, poisoned: poisoned)
        published.withLock { $0 = snapshot }
    }
}
